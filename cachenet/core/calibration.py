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
Where no threshold passes, the gate answers nothing: its agreement is None (no
accepted input has one) and ``reason`` says why.

:func:`fixed_sequence` is the search itself, over any sequence of candidates
given as accepted and disagreeing counts: the layer caches'
joint calibration (:mod:`cachenet.layercache.calibrate`) runs the same one.
numpy only (the bound is found by bisection on the binomial distribution), so
a device computes exactly what the build machine does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from cachenet.exceptions import CalibrationError

#: Threshold reported when no candidate passes: above every score, so the edge
#: answers nothing and everything escalates.
NEVER = 1.0 + 1e-6


def _log_binom_cdf(k: int, n: int, p: float) -> float:
    """``log P(X <= k)`` for ``X ~ Binomial(n, p)``, 0 <= k < n, 0 < p < 1."""
    i = np.arange(1, k + 1, dtype=np.float64)
    log_comb = np.concatenate(([0.0], np.cumsum(np.log(n - i + 1) - np.log(i))))
    j = np.arange(k + 1, dtype=np.float64)
    terms = log_comb + j * math.log(p) + (n - j) * math.log1p(-p)
    top = float(terms.max())
    return top + math.log(float(np.exp(terms - top).sum()))


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) upper confidence bound on a rate with k events in n trials:
    the ``p`` at which ``P(Binomial(n, p) <= k) = delta`` (the Beta(k + 1, n - k)
    quantile), found by bisection on the binomial distribution; numpy only, so the device
    computes what the build machine does."""
    if n <= 0 or k >= n:
        return 1.0
    if k < 0:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if k == 0:  # closed form: (1 - p)^n = delta
        return float(-math.expm1(math.log(delta) / n))
    level = math.log(delta)
    lo, hi = k / n, 1.0
    for _ in range(200):  # P(X <= k) falls as p grows; stop at float precision
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _log_binom_cdf(k, n, mid) > level:
            lo = mid
        else:
            hi = mid
    return hi


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


@dataclass(frozen=True)
class Passed:
    """The last candidate of a fixed sequence that passed: its index in the sequence, its
    accepted count ``n``, its disagreements ``k`` among them and their upper bound."""

    index: int
    n: int
    k: int
    ucb: float


def fixed_sequence(counts: Iterable[tuple[int, int]], *, n_total: int, target: float,
                   delta: float, tolerate: int = 1) -> Passed | None:
    """The one fixed-sequence Clopper-Pearson search, for the gate and the layer caches.

    ``counts`` gives, in the order fixed in advance (the most conservative candidate
    first), each candidate's accepted count and its disagreements among them; it may
    be a generator, read only as far as the search goes. Candidates accepting fewer
    than :func:`first_tested_n` are skipped (that depends on counts alone); the search
    stops at the first candidate whose upper bound on the disagreement exceeds ``1 -
    target``, and returns the last that passed, or None."""
    if not (0.0 < target < 1.0) or not (0.0 < delta < 1.0):
        raise CalibrationError(f"target {target} and delta {delta} must lie in (0, 1)")
    eps = 1.0 - target
    n_min = first_tested_n(n_total, eps, delta, tolerate)
    best: Passed | None = None
    for i, (n, k) in enumerate(counts):
        if n < n_min:
            continue
        ucb = clopper_pearson_upper(k, n, delta)
        if ucb > eps:
            break
        best = Passed(i, n, k, ucb)
    return best


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
    #: empirical, among accepted calibration inputs; None where none is accepted
    agreement: float | None
    disagreement_ucb: float
    feasible: bool
    #: why the gate answers nothing, where it does not
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def answers_nothing(cls, score: str, mode: str, target: float, delta: float, n: int,
                        reason: str, *, feasible: bool = False) -> Calibration:
        """A threshold above every score (:data:`NEVER`): everything escalates."""
        return cls(score, NEVER, mode, target, delta, n, 0, 0.0, None, 1.0, feasible, reason)


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
    """Hit rate and agreement among accepted inputs at ``threshold`` (agreement None where
    nothing is accepted)."""
    conf, agree = _check(conf, agree)
    accepted = conf >= threshold
    n_acc = int(accepted.sum())
    return {"n": len(conf), "n_accepted": n_acc, "hit_rate": n_acc / len(conf),
            "disagreements": int((~agree[accepted]).sum()),
            "agreement": float(agree[accepted].mean()) if n_acc else None,
            "overall_agreement": float(agree.mean())}


def calibrate_agreement(conf: np.ndarray, agree: np.ndarray, *, score: str,
                        target: float = 0.99, delta: float = 0.05,
                        steps: int = 100, tolerate: int = 1) -> Calibration:
    """Lowest threshold whose disagreement upper bound stays <= 1 - target (see module doc)."""
    if not (0.0 < target < 1.0) or not (0.0 < delta < 1.0):
        raise CalibrationError(f"target {target} and delta {delta} must lie in (0, 1)")
    conf, agree = _check(conf, agree)
    order = np.argsort(-conf, kind="stable")
    sorted_conf, sorted_dis = conf[order], np.cumsum(~agree[order])
    # The candidates, from the highest threshold down: the score at every 1% of the set,
    # each accepting every input that ties with it.
    thresholds = [float(sorted_conf[min(len(conf), math.ceil(j * len(conf) / steps)) - 1])
                  for j in range(1, steps + 1)]
    accepted = [int(np.searchsorted(-sorted_conf, -t, side="right")) for t in thresholds]
    best = fixed_sequence(((n, int(sorted_dis[n - 1])) for n in accepted), n_total=len(conf),
                          target=target, delta=delta, tolerate=tolerate)
    if best is None:
        return Calibration.answers_nothing(
            score, "agreement", target, delta, len(conf),
            f"no threshold keeps the disagreement's {1 - delta:.0%} upper bound at or under "
            f"{1 - target:.4g} on {len(conf)} calibration inputs: everything escalates")
    return Calibration(score, thresholds[best.index], "agreement", target, delta, len(conf),
                       best.n, best.n / len(conf), 1.0 - best.k / best.n, best.ucb, True)


def calibrate_budget(conf: np.ndarray, agree: np.ndarray, *, score: str,
                     escalation_budget: float, delta: float = 0.05) -> Calibration:
    """Threshold that escalates at most ``escalation_budget`` of the calibration inputs."""
    if not (0.0 <= escalation_budget <= 1.0):
        raise CalibrationError(f"escalation budget {escalation_budget} must lie in [0, 1]")
    conf, agree = _check(conf, agree)
    n_keep = math.ceil((1.0 - escalation_budget) * len(conf))
    if n_keep == 0:
        return Calibration.answers_nothing(score, "budget", escalation_budget, delta,
                                           len(conf), "the escalation budget is 1: "
                                           "everything escalates", feasible=True)
    t = float(np.sort(conf)[::-1][n_keep - 1])
    ev = evaluate(conf, agree, t)
    return Calibration(score, t, "budget", escalation_budget, delta, len(conf),
                       ev["n_accepted"], ev["hit_rate"], ev["agreement"],
                       clopper_pearson_upper(ev["disagreements"], ev["n_accepted"], delta), True)
