"""Thresholds that follow the stream, class by class: rolling risk control on the audit.

The gate is calibrated on a held-out split, and its bound is an average over the
classes of that split. A device's stream is one class for minutes at a time, and
its agreement is that class's. So the device moves its threshold per class of its
own answer (the label the edge gives: the only one it knows when it decides), with
the audit's random, unbiased samples of its answers as the evidence: rolling risk
control (Feldman, Bates and Romano, 2023), with importance weights.

For class ``k``, each audited answer ``i`` (picked with probability ``p_i``,
independently of the input; weight ``w_i = 1 / p_i``) moves the class's threshold

    theta <- max(floor, theta + gain * w_i * (d_i - eps))

where ``d_i`` is 1 when the edge disagreed with the full model and ``eps = 1 -
target``: up by about ``gain * w`` after a disagreement, down by ``gain * w * eps``
after an agreement. A stream the model reads well lowers the threshold (coverage
rises, down to ``floor``); one it confuses raises it, until the class answers only
what it is surest of, or nothing.

**The guarantee.** Scores lie in [0, 1], so the threshold only rises after an answer,
which needs ``theta <= 1`` when the edge answered; with at most ``m`` audits in flight
it never exceeds ``ceiling = 1 + m * gain * w_max``. Clipping at the floor only raises
it. Summing the updates, for every class and every stream,
adversarial ones included, at every moment:

    sum_i w_i * (d_i - eps) <= (ceiling - floor) / gain

The weighted sums estimate, without bias, the disagreements and the answers among
all of the class's edge answers (each answer is audited with probability ``p``, so
``E[w * audited] = 1``). So the class's long-run disagreement among its answers is
at most ``eps + (ceiling - floor) / (gain * N_k)`` for ``N_k`` answers, up to the
sampling noise of the audit: it tends to the target on any stream. It is a long-run
guarantee, not a bound at every moment; the anytime-valid audit
(:mod:`cachenet.core.audit`) stays the alarm that drops a step when the evidence
shows it breaking the target now. A class whose threshold rose above 1 answers
nothing more in this deployment (no answers, no audits): its inputs escalate until
the model is swapped or the agent restarts.

Standard library only: this runs on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cachenet.exceptions import ConfigError


@dataclass(frozen=True)
class RollingConfig:
    """``gain``: threshold units per unit of weighted excess disagreement; ``slack``:
    how far below the calibrated threshold a class may go (0: it only tightens)."""

    gain: float = 0.0005
    slack: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.gain <= 1.0:
            raise ConfigError(f"the per-class control's gain must lie in (0, 1], got "
                              f"{self.gain}")
        if not 0.0 <= self.slack <= 1.0:
            raise ConfigError(f"the per-class control's slack must lie in [0, 1], got "
                              f"{self.slack}")


@dataclass
class _Class:
    theta: float
    audited: int = 0
    disagreed: int = 0
    weight: float = 0.0  # sum of w_i: the estimated answers
    weighted_disagreed: float = 0.0  # sum of w_i d_i


@dataclass
class ClassThresholds:
    """The per-class thresholds of one deployment of a gate (a new model starts them
    afresh at its calibrated ``base``)."""

    base: float
    target: float
    config: RollingConfig = field(default_factory=RollingConfig)
    classes: dict[int, _Class] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise ConfigError(f"the agreement target must lie in (0, 1), got {self.target}")

    @property
    def floor(self) -> float:
        return max(0.0, self.base - self.config.slack)

    def threshold(self, label: int) -> float:
        c = self.classes.get(label)
        return self.base if c is None else c.theta

    def update(self, label: int, disagree: bool, probability: float) -> float:
        """One audited answer of class ``label``, picked with ``probability``; returns
        the class's new threshold."""
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"an audit's probability must lie in (0, 1], got {probability}")
        c = self.classes.setdefault(label, _Class(self.base))
        w = 1.0 / probability
        c.audited += 1
        c.disagreed += int(disagree)
        c.weight += w
        c.weighted_disagreed += w * disagree
        eps = 1.0 - self.target
        c.theta = max(self.floor, c.theta + self.config.gain * w * (float(disagree) - eps))
        return c.theta

    def snapshot(self) -> dict[str, Any]:
        return {"base": self.base, "floor": self.floor, "gain": self.config.gain,
                "classes": {str(k): {"threshold": c.theta, "audited": c.audited,
                                     "disagreed": c.disagreed,
                                     "estimated_answers": c.weight,
                                     "estimated_disagreement": (c.weighted_disagreed
                                                                / c.weight)}
                            for k, c in sorted(self.classes.items())}}
