"""Calibrate every rule's threshold together, so that the guarantee covers the cascade.

Rules are consulted in a fixed order (site by site, cheapest first); a request's
first hit ends it. Each rule alone could be calibrated as the gate is, but a
later rule only sees what the earlier ones did not take, which is harder, and
the errors of all rules add up: rules that each pass alone can fail together
(see the tests). So the thresholds are chosen as one family, indexed by a level
``e`` from 0 up:

* for each level, each rule's threshold is the lowest at which its own
  empirical disagreement with the full model, over the whole calibration set,
  is at most ``e`` (a *shape*, which spreads errors evenly over the rules);
* the cascade at that level is simulated on the calibration set: which inputs
  some rule answers (first hit), and how many of those disagree with the full
  model;
* levels are tested in a fixed sequence, from 0 up, with the one-sided
  Clopper-Pearson upper bound on the cascade's disagreement among the inputs it
  answers; the search stops at the first level that fails and returns the last
  that passed (fixed-sequence testing, as :mod:`cachenet.core.calibration`
  does for the gate, with the same start rule).

The guarantee: with confidence ``1 - delta``, among the requests the layer
caches answer, the rate of disagreement with the full model is at most
``1 - target``; every other request gets the full model's own answer. Scores
are ``(confidence, label)`` per rule and calibration input; labels are the full
model's, never ground truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from cachenet.core.calibration import NEVER, fixed_sequence
from cachenet.exceptions import CalibrationError


@dataclass
class CascadeCalibration:
    thresholds: list[float]
    level: float
    target: float
    delta: float
    n: int
    n_accepted: int
    hit_rate: float
    agreement: float | None  # among the inputs the caches answer (None: they answer none)
    disagreement_ucb: float
    feasible: bool
    hits_per_rule: list[int] = field(default_factory=list)
    disagreements_per_rule: list[int] = field(default_factory=list)
    reason: str | None = None  # why the caches answer nothing, where they do not

    def to_dict(self) -> dict:
        return asdict(self)


def rule_thresholds(conf: np.ndarray, agree: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Per level, the lowest threshold at which the rule's own disagreement over the
    calibration set is at most that level (NEVER where none is, or only confidence 0)."""
    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    positive = int((sorted_conf > 0).sum())
    out = np.full(len(levels), NEVER)
    if positive == 0:
        return out
    dis = np.cumsum(~agree[order][:positive])
    n = np.arange(1, positive + 1)
    for j, e in enumerate(levels):
        ok = np.flatnonzero(dis <= e * n + 1e-12)
        if len(ok):
            out[j] = sorted_conf[ok[-1]]
    return out


def first_hits(confs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per input, the index of the first rule that answers it, or -1."""
    hit = confs >= np.asarray(thresholds)[:, None]
    return np.where(hit.any(0), hit.argmax(0), -1)


def evaluate_cascade(confs: np.ndarray, labels: np.ndarray, reference: np.ndarray,
                     thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first rule per input or -1, whether the cascade's answer agrees with ``reference``:
    True where no rule answers, since the full model does)."""
    first = first_hits(confs, thresholds)
    answered = first >= 0
    label = np.where(answered, labels[np.maximum(first, 0), np.arange(len(reference))],
                     reference)
    return first, label == reference


def _check(confs: list[np.ndarray], labels: list[np.ndarray], reference: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    reference = np.asarray(reference, np.int64)
    if not confs or len(confs) != len(labels):
        raise CalibrationError("calibrating layer caches needs one (confidence, label) pair "
                               "of arrays per rule, and at least one rule")
    c = np.asarray(confs, np.float64)
    lab = np.asarray(labels, np.int64)
    if c.shape != lab.shape or c.ndim != 2 or c.shape[1] != len(reference) or not len(reference):
        raise CalibrationError(f"rule confidences {c.shape} and labels {lab.shape} must be "
                               f"rules x {len(reference)} calibration inputs")
    if not np.isfinite(c).all():
        raise CalibrationError("rule confidences contain NaN or infinite values")
    return c, lab, reference


def calibrate_cascade(confs: list[np.ndarray], labels: list[np.ndarray],
                      reference: np.ndarray, *, target: float = 0.99, delta: float = 0.05,
                      steps: int = 100, max_level: float = 0.25,
                      tolerate: int = 1) -> CascadeCalibration:
    """Thresholds for rules consulted in this order (see the module docstring)."""
    if not (0.0 < target < 1.0) or not (0.0 < delta < 1.0):
        raise CalibrationError(f"target {target} and delta {delta} must lie in (0, 1)")
    c, lab, ref = _check(confs, labels, reference)
    n_total = len(ref)
    levels = np.linspace(0.0, max_level, steps + 1)
    shapes = np.stack([rule_thresholds(c[r], lab[r] == ref, levels) for r in range(len(c))])

    def counts():  # the cascade simulated level by level, as far as the search goes
        for j in range(len(levels)):
            first, agree = evaluate_cascade(c, lab, ref, shapes[:, j])
            yield int((first >= 0).sum()), int((~agree[first >= 0]).sum())

    best = fixed_sequence(counts(), n_total=n_total, target=target, delta=delta,
                          tolerate=tolerate)
    if best is None:
        return CascadeCalibration(
            [NEVER] * len(c), 0.0, target, delta, n_total, 0, 0.0, None, 1.0, False,
            [0] * len(c), [0] * len(c),
            reason=f"no level keeps the cascade's disagreement bound at or under "
                   f"{1 - target:.4g} on {n_total} calibration inputs: no rule answers")
    j = best.index
    first, agree = evaluate_cascade(c, lab, ref, shapes[:, j])
    return CascadeCalibration(
        [float(t) for t in shapes[:, j]], float(levels[j]), target, delta, n_total, best.n,
        best.n / n_total, 1.0 - best.k / best.n, best.ucb, True,
        [int((first == r).sum()) for r in range(len(c))],
        [int(((first == r) & ~agree).sum()) for r in range(len(c))])
