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
* **class** (:func:`calibrate_classwise`): the same candidates, holding every
  class of the full model's answer to the target where the data can show it.
  On a stream of one class the edge's agreement is that class's, so a bound on
  the average over classes is not the promise. The threshold is the loosest
  candidate that passes the marginal test (at ``delta / 2``) before any class
  is *shown* to break the target (its ``1 - delta`` Clopper-Pearson lower bound
  on disagreement above ``1 - target``: a stopping rule, which only makes the
  result stricter). Each class is then reported with its bound: *certified*
  where its own fixed sequence (at ``delta / (2 K)``, Bonferroni over the
  classes and the marginal test, started where its accepted count can pass
  with ``tolerate`` disagreements) passed at every candidate up to the
  threshold; so with confidence ``1 - delta`` the marginal rate and every
  certified class's rate are within the target at once. *uncertified* where
  too few of its inputs are answered for a bound, *not certified* where its
  bound failed. (Stopping instead where a class's bound fails would certify
  every class with enough inputs, at the cost of most of the hit rate with a
  few thousand inputs a class.)
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

from cachenet.exceptions import CalibrationError, ConfigError

#: The calibration modes whose ``target`` is an agreement to hold (not a budget).
AGREEMENT_MODES = ("agreement", "class")
#: How a threshold is certified to an agreement target (:func:`calibrate_to_target`):
#: ``marginal``, over all the inputs, or ``class``, also with no class of the full
#: model's answer shown above the target.
CALIBRATIONS = ("marginal", "class")

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


def shown_above(k: int, n: int, rate: float, delta: float) -> bool:
    """Whether k events in n trials show the true rate above ``rate`` with confidence
    ``1 - delta``: the one-sided Clopper-Pearson lower bound above ``rate``, tested
    directly (``P(Binomial(n, rate) >= k) < delta``)."""
    if k <= 0 or n <= 0:
        return False
    if k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    return -math.expm1(_log_binom_cdf(k - 1, n, rate)) < delta


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
    mode: str  # one of AGREEMENT_MODES, or "budget"
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
    #: per class of the full model's answer, at the threshold (:func:`class_report`)
    classes: list[dict] | None = None

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


def _candidates(conf: np.ndarray, steps: int) -> tuple[list[float], list[int]]:
    """The candidate thresholds, from the highest down: the score at every ``1 / steps``
    of the set, each accepting every input that ties with it; and how many each accepts."""
    sorted_conf = np.sort(conf)[::-1]
    n = len(conf)
    thresholds = [float(sorted_conf[min(n, math.ceil(j * n / steps)) - 1])
                  for j in range(1, steps + 1)]
    return thresholds, [int(np.searchsorted(-sorted_conf, -t, side="right"))
                        for t in thresholds]


def calibrate_agreement(conf: np.ndarray, agree: np.ndarray, *, score: str,
                        target: float = 0.99, delta: float = 0.05,
                        steps: int = 100, tolerate: int = 1) -> Calibration:
    """Lowest threshold whose disagreement upper bound stays <= 1 - target (see module doc)."""
    if not (0.0 < target < 1.0) or not (0.0 < delta < 1.0):
        raise CalibrationError(f"target {target} and delta {delta} must lie in (0, 1)")
    conf, agree = _check(conf, agree)
    sorted_dis = np.cumsum(~agree[np.argsort(-conf, kind="stable")])
    thresholds, accepted = _candidates(conf, steps)
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


def class_counts(conf: np.ndarray, agree: np.ndarray, groups: np.ndarray, num_groups: int,
                 cuts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per class, with inputs sorted by score (highest first, ties stably), how many of
    the first ``m`` are of that class and how many of those disagree, for each ``m`` in
    ``cuts`` (non-decreasing): two ``len(cuts) x num_groups`` arrays."""
    groups = np.asarray(groups, np.int64)
    if groups.shape != conf.shape or (len(groups) and (groups.min() < 0
                                                       or groups.max() >= num_groups)):
        raise CalibrationError(f"classes {groups.shape} must be one per score, in "
                               f"[0, {num_groups})")
    order = np.argsort(-conf, kind="stable")
    g, wrong = groups[order], ~agree[order]
    accepted = np.zeros((len(cuts), num_groups), np.int64)
    dis = np.zeros_like(accepted)
    start, acc, bad = 0, np.zeros(num_groups, np.int64), np.zeros(num_groups, np.int64)
    for row, m in enumerate(cuts):
        acc = acc + np.bincount(g[start:m], minlength=num_groups)
        bad = bad + np.bincount(g[start:m][wrong[start:m]], minlength=num_groups)
        accepted[row], dis[row], start = acc, bad, m
    return accepted, dis


def _first_failure(accepted: np.ndarray, dis: np.ndarray, *, total: int, target: float,
                   delta: float, tolerate: int) -> int:
    """Index of the candidate at which one class's fixed sequence fails (``len(accepted)``
    where it never does, or never has inputs enough to be tested)."""
    passed = fixed_sequence(zip(accepted.tolist(), dis.tolist(), strict=True), n_total=total,
                            target=target, delta=delta, tolerate=tolerate)
    n_min = first_tested_n(total, 1.0 - target, delta, tolerate)
    first = next((j for j, n in enumerate(accepted) if n >= n_min), len(accepted))
    return first if passed is None else passed.index + 1


def check_calibration(calibration: str) -> str:
    """``calibration`` if it is one of :data:`CALIBRATIONS`, else :class:`ConfigError`."""
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"calibration must be one of {', '.join(CALIBRATIONS)}, not "
                          f"'{calibration}'")
    return calibration


def calibrate_to_target(conf: np.ndarray, agree: np.ndarray, groups: np.ndarray,
                        num_groups: int, *, calibration: str, score: str,
                        target: float = 0.99, delta: float = 0.05) -> Calibration:
    """The agreement search ``calibration`` names: :func:`calibrate_agreement`, or
    :func:`calibrate_classwise` over ``groups`` (each input's class of the full
    model's answer)."""
    if check_calibration(calibration) == "class":
        return calibrate_classwise(conf, agree, groups, num_groups, score=score,
                                   target=target, delta=delta)
    return calibrate_agreement(conf, agree, score=score, target=target, delta=delta)


def calibrate_classwise(conf: np.ndarray, agree: np.ndarray, groups: np.ndarray,
                        num_groups: int, *, score: str, target: float = 0.99,
                        delta: float = 0.05, steps: int = 100,
                        tolerate: int = 1) -> Calibration:
    """The loosest candidate of :func:`calibrate_agreement` that passes the marginal test
    (at ``delta / 2``) and at which no class is shown to break the target, with each
    class's certification there (see the module doc). ``groups``: each input's class of
    the full model's answer."""
    if not (0.0 < target < 1.0) or not (0.0 < delta < 1.0):
        raise CalibrationError(f"target {target} and delta {delta} must lie in (0, 1)")
    conf, agree = _check(conf, agree)
    eps, n = 1.0 - target, len(conf)
    level = delta / (2 * num_groups)
    thresholds, cuts = _candidates(conf, steps)
    accepted, dis = class_counts(conf, agree, groups, num_groups, cuts)
    totals = np.bincount(np.asarray(groups, np.int64), minlength=num_groups)
    class_min = [first_tested_n(int(t), eps, level, tolerate) for t in totals]
    marginal = fixed_sequence(zip(cuts, dis.sum(1).tolist(), strict=True), n_total=n,
                              target=target, delta=delta / 2, tolerate=tolerate)
    last = -1 if marginal is None else marginal.index
    for j in range(last + 1):  # stop before a class is shown to break the target
        if any(shown_above(int(dis[j, c]), int(accepted[j, c]), eps, delta)
               for c in range(num_groups)):
            last = j - 1
            break
    if last >= 0 and cuts[last] < first_tested_n(n, eps, delta / 2, tolerate):
        last = -1  # only candidates the marginal test skipped are left
    if last < 0:
        cal = Calibration.answers_nothing(
            score, "class", target, delta, n,
            f"no threshold keeps the marginal disagreement's bound at or under "
            f"{1 - target:.4g} without a class shown above it, on {n} calibration inputs: "
            "everything escalates")
        cal.classes = class_report(conf, agree, groups, num_groups, NEVER, target=target,
                                   delta=delta, tolerate=tolerate)
        return cal
    m, t = cuts[last], thresholds[last]
    k = int(dis[last].sum())
    report = class_report(conf, agree, groups, num_groups, t, target=target, delta=delta,
                          tolerate=tolerate)
    for c, row in enumerate(report):
        # Certified: tested at every candidate up to here in its own sequence, and passed.
        failed_at = _first_failure(accepted[:, c], dis[:, c], total=int(totals[c]),
                                   target=target, delta=level, tolerate=tolerate)
        row["status"] = ("uncertified" if accepted[last, c] < class_min[c] else
                         "certified" if failed_at > last else "not certified")
    return Calibration(score, t, "class", target, delta, n, m, m / n, 1.0 - k / m,
                       clopper_pearson_upper(k, m, delta / 2), True, classes=report)


def class_report(conf: np.ndarray, agree: np.ndarray, groups: np.ndarray, num_groups: int,
                 threshold: float, *, target: float, delta: float,
                 tolerate: int = 1) -> list[dict]:
    """Per class of the full model's answer, at ``threshold``: its inputs ``n``, how many
    the edge answers, the disagreements among those, their agreement, and the upper
    bound on the class's disagreement at ``delta / (2 K)``. ``status``: ``certified``
    where the class has enough answered inputs to pass with ``tolerate``
    disagreements and its bound meets the target; ``not certified`` where it has enough
    and does not; ``uncertified`` where the data are too few to tell. (At a threshold
    :func:`calibrate_classwise` chose, every class with enough is certified; at
    another threshold the bound is a description, not a guarantee.)"""
    conf, agree = _check(conf, agree)
    groups = np.asarray(groups, np.int64)
    eps, level = 1.0 - target, delta / (2 * num_groups)
    out = []
    for c in range(num_groups):
        mine = groups == c
        acc = mine & (conf >= threshold)
        n_acc, k = int(acc.sum()), int((acc & ~agree).sum())
        ucb = clopper_pearson_upper(k, n_acc, level)
        if n_acc < first_tested_n(int(mine.sum()), eps, level, tolerate):
            status = "uncertified"
        else:
            status = "certified" if ucb <= eps else "not certified"
        out.append({"class": c, "n": int(mine.sum()), "n_accepted": n_acc,
                    "disagreements": k, "agreement": 1.0 - k / n_acc if n_acc else None,
                    "ucb": ucb, "status": status})
    return out
