"""Error control online (Finamore et al.'s auto-refresh), for every rule alike.

A share ``rate`` of a rule's hits is not answered from the cache: the request
goes on to the full model (in the cloud) or to the cloud (on the edge), and
the cached label is compared with the full model's. Each comparison is one draw
of the rule's disagreement, and the counts are watched after every batch of
re-checks, so the test is the audit's anytime-valid one
(:class:`cachenet.core.audit.ErrorBound`: a fixed-n test checked that often would
be crossed by chance). While the disagreements seen are consistent with the
agreement target, nothing changes. When the bound's lower end rises above
``1 - target``, the rule is *tightened*: its threshold moves half way to 1 (a
smaller radius, a higher count, a surer head), and counting starts again, as the
audit restarts a step it brings back. The hits picked are every
``round(1 / rate)``-th, so runs repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cachenet.core.audit import ErrorBound
from cachenet.exceptions import ConfigError


def tightened(threshold: float) -> float:
    """A threshold half way to 1: confidences live in [0, 1]."""
    return threshold + (1.0 - threshold) / 2.0 if threshold < 1.0 else threshold


@dataclass
class Refresh:
    rate: float = 0.05
    target: float = 0.99
    alpha: float = 0.05
    hits: int = 0  # hits seen, for picking
    n: int = 0  # re-checks since the last tightening
    k: int = 0  # disagreements among them
    checked: int = 0  # re-checks in all
    disagreed: int = 0
    tightenings: int = 0
    rule: ErrorBound = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"refresh rate {self.rate} must lie in [0, 1]")
        self.rule = ErrorBound(self.target, self.alpha)

    def pick(self, n_hits: int) -> np.ndarray:
        """Which of the next ``n_hits`` hits to re-check."""
        every = round(1.0 / self.rate) if self.rate > 0 else 0
        picked = np.zeros(n_hits, bool)
        if every:
            picked[(self.hits + np.arange(n_hits)) % every == every - 1] = True
        self.hits += n_hits
        return picked

    def record(self, agree: np.ndarray) -> bool:
        """Count re-checks; True when the rule must tighten (its error broke the target)."""
        agree = np.asarray(agree, bool)
        self.n += len(agree)
        self.k += int((~agree).sum())
        self.checked += len(agree)
        self.disagreed += int((~agree).sum())
        if self.rule.broken(self.k, self.n):
            self.n = self.k = 0
            self.tightenings += 1
            return True
        return False

    def snapshot(self) -> dict[str, int | float]:
        return {"rate": self.rate, "checked": self.checked, "disagreed": self.disagreed,
                "tightenings": self.tightenings}
