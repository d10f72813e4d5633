"""The online audit: the agreement target checked on the live stream, at every moment.

A bundle's gate is calibrated on a held-out split; a device's stream is not that
split, and what the device learns online (the stream's prior, the layer caches'
entries, pushed partition models) was never calibrated at all. So the agent
sends a random share (``rate``) of the inputs it answers itself to the cloud as
well (a shadow escalation: the application gets the edge's answer at once) and
compares; right after a change (a new agent, the stream moving, a model swapped
in) a burst of answers is audited at a higher rate. Which answers are audited
never depends on the answers themselves, so every audit is a fair draw of the
step's disagreement at that moment (the bursts weigh the moments after changes,
when it is most in doubt). Each comparison is one Bernoulli draw of the edge's disagreement with
the full model, attributed to the cascade step that answered (:data:`STEPS`).

The agent watches these counts continuously, so a fixed-n bound (Clopper-Pearson
after each audit) is not valid: checked often enough, it is crossed by chance.
:func:`confidence_sequence` is anytime-valid instead: the Beta-binomial mixture
martingale ``M_n(p) = B(a + k, b + n - k) / B(a, b) / (p^k (1 - p)^(n - k))`` is
a nonnegative martingale with ``M_0 = 1`` when the disagreement rate is ``p``,
so by Ville's inequality ``P(exists n: M_n(p) >= 1/alpha) <= alpha``, and
``{p : M_n(p) < 1/alpha}`` covers ``p`` at every n at once with probability
``1 - alpha``. The mixing prior ``Beta(1, (1 - eps) / eps)`` has its mean at
the tolerated rate ``eps = 1 - target``, where the test needs its power.

The rule (:class:`ErrorBound`, the one rule of online error control: the agent's
audit and the layer caches' auto-refresh, in the cloud and on the edge, both
apply it): a step whose *lower* bound rises above ``eps`` breaks the target (the
evidence is significant at ``alpha``). The audit (:class:`Audit`) drops it, so its
inputs escalate, for ``cooldown`` requests, doubled at each repeated drop, and
comes back with its counts restarted. The *upper* bound is the guarantee the
agent reports (``agreement_bound``: the agreement is at least this, at
confidence ``1 - alpha``). When the cloud is unreachable, audits cannot be
answered: the audit says so (``paused``) and resumes with the next answer.

Assumption: within one epoch of a step (between restarts) its disagreement
rate is constant. Standard library only: this runs on the device.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

from cachenet.exceptions import ConfigError

log = logging.getLogger(__name__)

#: The cascade steps whose answers are audited, in the device's cascade order. The
#: general model's answers, with or without the stream's prior, are one step (``model``:
#: they are calibrated together); ``prior`` is only ever dropped in its place.
STEPS = ("layers", "partition", "prior", "model")


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def log_martingale(k: int, n: int, p: float, a: float, b: float) -> float:
    """``log M_n(p)``: the Beta(a, b)-mixture wealth against the rate ``p`` after ``k``
    events in ``n`` draws (``+inf`` where ``p`` is impossible: 0 with an event, 1
    with a non-event)."""
    if (k > 0 and p <= 0.0) or (n - k > 0 and p >= 1.0):
        return math.inf
    ll = (k * math.log(p) if k else 0.0) + ((n - k) * math.log1p(-p) if n - k else 0.0)
    return _log_beta(a + k, b + n - k) - _log_beta(a, b) - ll


def _edge(k: int, n: int, level: float, a: float, b: float, lo: float, hi: float) -> float:
    """The crossing of ``log M = level`` between ``lo`` (inside) and ``hi`` (outside)."""
    for _ in range(60):
        mid = (lo + hi) / 2
        if log_martingale(k, n, mid, a, b) < level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def confidence_sequence(k: int, n: int, alpha: float, a: float = 1.0, b: float = 1.0
                        ) -> tuple[float, float]:
    """(lower, upper): the anytime-valid ``1 - alpha`` confidence interval of a rate
    after ``k`` events in ``n`` draws (see the module docstring)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    level = math.log(1.0 / alpha)
    p_hat = k / n
    lower = 0.0 if log_martingale(k, n, 0.0, a, b) < level else _edge(
        k, n, level, a, b, p_hat, 0.0)
    upper = 1.0 if log_martingale(k, n, 1.0, a, b) < level else _edge(
        k, n, level, a, b, p_hat, 1.0)
    return lower, upper


@dataclass(frozen=True)
class ErrorBound:
    """The one rule of online error control: the anytime-valid ``1 - alpha`` interval of a
    disagreement rate, with the Beta-mixture's mean at the tolerated rate, and the test
    that says a rate breaks the agreement ``target``. Valid however often it is checked."""

    target: float = 0.99
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0 or not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"target {self.target} and alpha {self.alpha} must lie in (0, 1)")

    @property
    def mixing(self) -> tuple[float, float]:
        """The Beta prior of the mixture: mean at ``1 - target``."""
        eps = 1.0 - self.target
        return 1.0, (1.0 - eps) / eps

    def interval(self, k: int, n: int) -> tuple[float, float]:
        """(lower, upper) on the disagreement rate after ``k`` disagreements in ``n``."""
        return confidence_sequence(k, n, self.alpha, *self.mixing)

    def broken(self, k: int, n: int) -> bool:
        """Do ``k`` disagreements in ``n`` show, at ``alpha``, a rate above ``1 - target``?
        That is, is the interval's lower end above it: the wealth against the tolerated
        rate, which falls as the rate rises to ``k / n``, has reached ``1 / alpha``."""
        eps = 1.0 - self.target
        return k > eps * n and log_martingale(k, n, eps, *self.mixing) >= -math.log(self.alpha)


@dataclass(frozen=True)
class AuditConfig:
    """``rate``: share of edge answers audited; ``target``: the agreement to hold;
    ``alpha``: the bound's error probability; ``cooldown``: requests a breaking step
    stays dropped (doubled at each repeated drop); ``max_inflight``: audits waiting for
    the cloud at once (beyond it, an audit is skipped and counted)."""

    rate: float = 0.02
    target: float = 0.99
    alpha: float = 0.05
    cooldown: int = 500
    max_inflight: int = 8
    seed: int | None = None
    #: after a change (the agent starts, the stream moves, a model is swapped in) the
    #: next ``burst`` edge answers are audited at ``burst_rate``: what was calibrated
    #: elsewhere is checked when it is most in doubt (rate 0 still turns the audit off)
    burst_rate: float = 0.25
    burst: int = 40

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0 or not 0.0 <= self.burst_rate <= 1.0:
            raise ConfigError(f"audit rates must lie in [0, 1], got {self.rate} and "
                              f"{self.burst_rate}")
        if self.burst < 0:
            raise ConfigError(f"audit burst must be >= 0 answers, got {self.burst}")
        if not 0.0 < self.target < 1.0 or not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"audit target {self.target} and alpha {self.alpha} must lie "
                              "in (0, 1)")
        if self.cooldown < 1 or self.max_inflight < 1:
            raise ConfigError("audit cooldown and max_inflight must be >= 1")

    @property
    def rule(self) -> ErrorBound:
        return ErrorBound(self.target, self.alpha)


@dataclass
class StepAudit:
    """One step's counts: in the current epoch (``n``, ``k``) and in all (``total_*``)."""

    n: int = 0
    k: int = 0
    total_n: int = 0
    total_k: int = 0
    drops: int = 0
    dropped_until: int = -1  # the request count at which the step comes back
    epoch: int = 0  # bumped at each restart: audits from an older epoch count in totals only

    def add(self, disagree: bool, *, epoch: bool = True) -> None:
        """One audit; ``epoch`` False counts it in the totals only."""
        self.total_n += 1
        self.total_k += int(disagree)
        if epoch:
            self.n += 1
            self.k += int(disagree)


@dataclass
class Audit:
    """The agent's audit: which answers to check, their counts, and which steps hold."""

    config: AuditConfig = field(default_factory=AuditConfig)

    def __post_init__(self) -> None:
        self.rule = self.config.rule
        self.steps = {s: StepAudit() for s in STEPS}
        self.requests = 0  # requests seen: the clock of the cooldowns
        self.inflight = 0
        self.skipped = 0
        self.lost = 0  # audits the cloud did not answer
        self.paused: str | None = None
        self.bursts = 0
        self._burst_left = 0
        self.last_rate = 0.0
        self._rng = random.Random(self.config.seed)
        self.begin_burst()  # a new agent: nothing of this stream was checked yet

    def begin_burst(self) -> None:
        """Audit the next ``burst`` edge answers at ``burst_rate`` (see the config)."""
        if self.config.burst and self.config.burst_rate > self.config.rate > 0.0:
            self._burst_left = self.config.burst
            self.bursts += 1

    # -- the request path --------------------------------------------------
    def tick(self) -> None:
        """Count one request: the clock of the cooldowns."""
        self.requests += 1

    def allowed(self, step: str) -> bool:
        """May ``step`` answer now? (Not while dropped; its return restarts its counts.)"""
        s = self.steps[step]
        if s.dropped_until < 0:
            return True
        if self.requests < s.dropped_until:
            return False
        self.restart(step)
        log.info("audit: step %s is back after its cooldown", step)
        return True

    def restart(self, step: str) -> None:
        """A new epoch for ``step`` (it is back, or what answers for it changed): its
        counts start again, and audits still in flight from before count in totals only."""
        s = self.steps[step]
        s.dropped_until, s.n, s.k = -1, 0, 0
        s.epoch += 1

    def _drop(self, s: StepAudit) -> None:
        """Drop a step for its cooldown, doubled at each repeat."""
        s.drops += 1
        s.dropped_until = self.requests + self.config.cooldown * 2 ** (s.drops - 1)

    def divert(self, step: str, to: str) -> None:
        """Move ``step``'s fresh drop to ``to`` (the adapted part goes first): ``to`` is
        dropped for as long, and ``step`` starts a new epoch without it."""
        s, t = self.steps[step], self.steps[to]
        self._drop(t)
        s.drops -= 1
        self.restart(step)
        t.epoch += 1
        log.warning("audit: dropping %s in place of %s", to, step)

    def epoch(self, step: str) -> int:
        return self.steps[step].epoch

    def pick(self, available: bool = True) -> bool:
        """For one edge answer: True when it is to be audited (a shadow escalation).
        ``available``: False where there is no cloud to audit with."""
        rate = self.config.rate
        if self._burst_left > 0:
            self._burst_left -= 1
            rate = self.config.burst_rate
        self.last_rate = rate  # the draw's probability: importance weights need it
        if not available or rate <= 0.0 or self._rng.random() >= rate:
            return False
        if self.inflight >= self.config.max_inflight:
            self.skipped += 1
            return False
        self.inflight += 1
        return True

    # -- the cloud's answers -----------------------------------------------
    def record(self, step: str, agree: bool, epoch: int | None = None) -> bool:
        """One audited answer: the edge's ``step`` agreed with the cloud or not, picked in
        ``epoch`` of the step (default: the current one). Returns True when this drops
        the step (its lower bound broke the target)."""
        self.inflight -= 1
        self.paused = None
        s = self.steps[step]
        if s.dropped_until >= 0 or (epoch is not None and epoch != s.epoch):
            s.add(not agree, epoch=False)  # dropped already, or from an epoch that is over
            return False
        s.add(not agree)
        if not self.rule.broken(s.k, s.n):
            return False
        self._drop(s)
        log.warning("audit: step %s breaks the agreement target %.3g (%d disagreements in %d "
                    "audits, lower bound %.4f); dropped for %d requests", step,
                    self.config.target, s.k, s.n, self.bound(s.k, s.n)[0],
                    s.dropped_until - self.requests)
        return True

    def unanswered(self, reason: str) -> None:
        """An audit the cloud did not answer: the audit pauses until one is."""
        self.inflight -= 1
        self.lost += 1
        self.paused = reason

    def bound(self, k: int, n: int) -> tuple[float, float]:
        return self.rule.interval(k, n)

    def snapshot(self) -> dict[str, Any]:
        """Counts and bounds. ``agreement_bound`` pools every step and epoch: it is the
        run's figure, exact only where the rate held still; the per-step epoch bounds
        are the ones the drop rule uses."""
        n = sum(s.total_n for s in self.steps.values())
        k = sum(s.total_k for s in self.steps.values())
        _, upper = self.bound(k, n)
        steps = {}
        for name, s in self.steps.items():
            if not s.total_n and not s.drops:
                continue
            _, up = self.bound(s.k, s.n)
            steps[name] = {"audited": s.total_n, "disagreed": s.total_k,
                           "epoch_audited": s.n, "epoch_agreement_bound": 1.0 - up,
                           "drops": s.drops, "dropped": self.requests < s.dropped_until}
        return {"rate": self.config.rate, "target": self.config.target,
                "confidence": 1.0 - self.config.alpha, "audited": n, "disagreed": k,
                "agreement": 1.0 - k / n if n else None, "agreement_bound": 1.0 - upper,
                "inflight": self.inflight, "skipped": self.skipped, "lost": self.lost,
                "bursts": self.bursts, "burst_left": self._burst_left,
                "paused": self.paused, "steps": steps}
