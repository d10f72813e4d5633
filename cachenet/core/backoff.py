"""Waits between retries that grow, and are jittered: a fleet does not retry in lockstep.

After a cloud restarts, every agent that lost it retries; with fixed delays they all
come back in the same instant, and keep doing so. Each delay is drawn uniformly within
``jitter`` of the nominal one (gRPC's own reconnect backoff does the same, at 20%).
Standard library only: the device runs it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each delay lies in nominal x [1 - jitter, 1 + jitter]
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _nominal: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.multiplier >= 1
                and 0 <= self.jitter < 1):
            raise ValueError(f"bad backoff {self.initial}, {self.maximum}, {self.multiplier}, "
                             f"{self.jitter}")
        self._nominal = self.initial

    def next(self) -> float:
        """The next delay, seconds; the one after grows by ``multiplier`` up to ``maximum``."""
        delay = self._nominal * self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        self._nominal = min(self.maximum, self._nominal * self.multiplier)
        return delay

    def reset(self) -> None:
        """Success: the next failure waits ``initial`` again."""
        self._nominal = self.initial
