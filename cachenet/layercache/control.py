"""Error control online (Finamore et al.'s auto-refresh), for every rule alike.

A share ``rate`` of a rule's hits is not answered from the cache: the request
goes on to the full model (in the cloud) or to the cloud (on the edge), and
the cached label is compared with the full model's. While the disagreements
seen are consistent with the agreement target, nothing changes. When they are
not, that is when the chance of seeing ``k`` or more disagreements in ``n``
re-checks at a disagreement rate of ``1 - target`` falls below ``delta`` (a
one-sided binomial test), the rule is *tightened*: its threshold moves half
way to 1 (a smaller radius, a higher count, a surer head), and counting starts
again. The hits picked are every ``round(1 / rate)``-th, so runs repeat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cachenet.exceptions import ConfigError


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p); pure Python (the edge has no scipy)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    below = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                         + i * math.log(p) + (n - i) * math.log1p(-p)) for i in range(k))
    return max(0.0, 1.0 - below)


def tightened(threshold: float) -> float:
    """A threshold half way to 1: confidences live in [0, 1]."""
    return threshold + (1.0 - threshold) / 2.0 if threshold < 1.0 else threshold


@dataclass
class Refresh:
    rate: float = 0.05
    target: float = 0.99
    delta: float = 0.05
    hits: int = 0  # hits seen, for picking
    n: int = 0  # re-checks since the last tightening
    k: int = 0  # disagreements among them
    checked: int = 0  # re-checks in all
    disagreed: int = 0
    tightenings: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.rate <= 1.0 and 0.0 < self.target < 1.0 and 0.0 < self.delta < 1.0):
            raise ConfigError(f"refresh rate {self.rate}, target {self.target} and delta "
                              f"{self.delta} must lie in [0, 1], (0, 1) and (0, 1)")

    def pick(self, n_hits: int) -> np.ndarray:
        """Which of the next ``n_hits`` hits to re-check."""
        every = round(1.0 / self.rate) if self.rate > 0 else 0
        picked = np.zeros(n_hits, bool)
        if every:
            picked[(self.hits + np.arange(n_hits)) % every == every - 1] = True
        self.hits += n_hits
        return picked

    def record(self, agree: np.ndarray) -> bool:
        """Count re-checks; True when the rule must tighten (its error broke the bound)."""
        agree = np.asarray(agree, bool)
        self.n += len(agree)
        self.k += int((~agree).sum())
        self.checked += len(agree)
        self.disagreed += int((~agree).sum())
        if self.k and binomial_tail(self.k, self.n, 1.0 - self.target) < self.delta:
            self.n = self.k = 0
            self.tightenings += 1
            return True
        return False

    def snapshot(self) -> dict[str, int | float]:
        return {"rate": self.rate, "checked": self.checked, "disagreed": self.disagreed,
                "tightenings": self.tightenings}
