"""Calibrate the gate's threshold on held-out data, with a statistical guarantee.

Two modes:

* **agreement** (the default): choose the lowest threshold (the highest hit
  rate) such that, among the inputs the edge would answer, the rate of
  disagreement with the full model is at most ``1 - target`` with confidence
  ``1 - delta``. Each candidate threshold is tested with the one-sided
  Clopper-Pearson upper bound on its disagreement rate. Candidates are tested
  in a fixed sequence, from the highest threshold down, and the search stops at
  the first one that fails (fixed-sequence testing, as in Learn-then-Test), so
  the guarantee holds for the threshold returned and not only for each
  candidate alone. The sequence starts at the first candidate whose accepted
  count is large enough to pass with one disagreement (``tolerate``), where the
  calibration set holds at least twice that count, else at the first that can
  pass with none. Starting at the smallest testable count would make the whole
  search hang on zero disagreements among the most confident few hundred
  inputs, and one of those is often a mistake of the full model's: on CIFAR-10
  one disagreement among the top 300 of 5000 left the general cache model no
  gate at 0.99, where the top 500 (one disagreement) pass. The start depends on
  the counts alone, not on agreement, so the order is still fixed in advance.
  The candidates are the scores at every 1% of the calibration set.
* **budget**: escalate at most a given share of inputs; the threshold is the
  matching quantile of the scores, and the agreement it reaches is reported.

The inputs are each calibration example's gate score and whether the cache
model's label equals the full model's label; ground-truth labels are not used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from cachenet.exceptions import CalibrationError

#: Threshold reported when no candidate passes: above every score, so the edge
#: answers nothing and everything escalates.
NEVER = 1.0 + 1e-6


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) upper confidence bound on a rate with k events in n trials."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(1.0 - delta, k + 1, n - k))


def min_testable_n(epsilon: float, delta: float, k: int = 0) -> int:
    """Smallest n at which ``k`` events give an upper bound <= epsilon."""
    # With k = 0 the bound is 1 - delta**(1/n); it falls as n grows for any k.
    lo = math.ceil(math.log(delta) / math.log(1.0 - epsilon))
    if k == 0:
        return lo
    hi = lo
    while clopper_pearson_upper(k, hi, delta) > epsilon:
        lo, hi = hi, 2 * hi
    while lo < hi:  # the smallest passing n in (lo, hi]
        mid = (lo + hi) // 2
        if clopper_pearson_upper(k, mid, delta) <= epsilon:
            hi = mid
        else:
            lo = mid + 1
    return hi


def first_tested_n(n_total: int, epsilon: float, delta: float, tolerate: int = 1) -> int:
    """Accepted count at which the fixed sequence starts: large enough to pass with
    ``tolerate`` disagreements (fewer where the calibration set is under twice that)."""
    for k in range(tolerate, 0, -1):
        n = min_testable_n(epsilon, delta, k)
        if 2 * n <= n_total:
            return n
    return min_testable_n(epsilon, delta)


@dataclass
class Calibration:
    score: str
    threshold: float
    mode: str  # "agreement" or "budget"
    target: float  # agreement target, or the escalation budget in budget mode
    delta: float
    n: int
    n_accepted: int
    hit_rate: float
    agreement: float  # empirical, among accepted calibration inputs
    disagreement_ucb: float
    feasible: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _check(conf: np.ndarray, agree: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(conf, dtype=np.float64)
    agree = np.asarray(agree, dtype=bool)
    if conf.ndim != 1 or conf.shape != agree.shape:
        raise CalibrationError(f"scores {conf.shape} and agreement {agree.shape} must be "
                               "1-D arrays of one length")
    if len(conf) == 0:
        raise CalibrationError("the calibration split is empty")
    if not np.isfinite(conf).all():
        raise CalibrationError("gate scores contain NaN or infinite values")
    return conf, agree


def evaluate(conf: np.ndarray, agree: np.ndarray, threshold: float) -> dict:
    """Hit rate and agreement among accepted inputs at ``threshold``."""
    conf, agree = _check(conf, agree)
    accepted = conf >= threshold
    n_acc = int(accepted.sum())
    return {"n": len(conf), "n_accepted": n_acc, "hit_rate": n_acc / len(conf),
            "agreement": float(agree[accepted].mean()) if n_acc else float("nan"),
            "overall_agreement": float(agree.mean())}


def calibrate_agreement(conf: np.ndarray, agree: np.ndarray, *, score: str,
                        target: float = 0.99, delta: float = 0.05,
                        steps: int = 100, tolerate: int = 1) -> Calibration:
    """Lowest threshold whose disagreement upper bound stays <= 1 - target (see module doc)."""
    if not (0.0 < target < 1.0) or not (0.0 < delta < 1.0):
        raise CalibrationError(f"target {target} and delta {delta} must lie in (0, 1)")
    conf, agree = _check(conf, agree)
    eps = 1.0 - target
    order = np.argsort(-conf, kind="stable")
    sorted_conf, sorted_dis = conf[order], np.cumsum(~agree[order])
    n_min = first_tested_n(len(conf), eps, delta, tolerate)
    best: tuple[float, int, int, float] | None = None
    for j in range(1, steps + 1):
        idx = min(len(conf), math.ceil(j * len(conf) / steps)) - 1
        t = float(sorted_conf[idx])
        n = int(np.searchsorted(-sorted_conf, -t, side="right"))  # ties included
        if n < n_min:
            continue
        k = int(sorted_dis[n - 1])
        ucb = clopper_pearson_upper(k, n, delta)
        if ucb > eps:
            break
        if best is None or t < best[0]:
            best = (t, n, k, ucb)
    if best is None:
        return Calibration(score, NEVER, "agreement", target, delta, len(conf), 0, 0.0,
                           float("nan"), 1.0, False)
    t, n, k, ucb = best
    return Calibration(score, t, "agreement", target, delta, len(conf), n, n / len(conf),
                       1.0 - k / n, ucb, True)


def calibrate_budget(conf: np.ndarray, agree: np.ndarray, *, score: str,
                     escalation_budget: float, delta: float = 0.05) -> Calibration:
    """Threshold that escalates at most ``escalation_budget`` of the calibration inputs."""
    if not (0.0 <= escalation_budget <= 1.0):
        raise CalibrationError(f"escalation budget {escalation_budget} must lie in [0, 1]")
    conf, agree = _check(conf, agree)
    n_keep = math.ceil((1.0 - escalation_budget) * len(conf))
    if n_keep == 0:
        return Calibration(score, NEVER, "budget", escalation_budget, delta, len(conf), 0, 0.0,
                           float("nan"), 1.0, True)
    t = float(np.sort(conf)[::-1][n_keep - 1])
    ev = evaluate(conf, agree, t)
    k = ev["n_accepted"] - round(ev["agreement"] * ev["n_accepted"])
    return Calibration(score, t, "budget", escalation_budget, delta, len(conf),
                       ev["n_accepted"], ev["hit_rate"], ev["agreement"],
                       clopper_pearson_upper(k, ev["n_accepted"], delta), True)
