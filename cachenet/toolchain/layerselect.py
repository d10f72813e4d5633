"""Which layer caches pay for their lookups: measured costs and a greedy choice.

A lookup's multiply-adds say little about its time: a kNN search is one matrix
product and a scan, an approximate key a few dictionary probes per input, and
on a CPU their fixed costs are of the order of a small convolution. So the
costs are *measured* where the caches are fitted: the time per input of each
stage of the model, and of each candidate's lookup, on a batch of 64
(:func:`measure_costs`; the fastest of ten runs, since noise only adds time;
recorded in the manifest).

:func:`select` then grows the cascade greedily on the selection data: at each
step it adds the candidate that most lowers the mean time per request (the
stages run until the first hit, plus every lookup consulted on the way), each
candidate at the threshold at which its own disagreement is at most
``1 - target``; a candidate is added only if its lookups cost at most
``max_lookup_share`` of the time its hits save, and all lookups together at most
``budget`` of the model's time. It stops when no candidate pays.

On the edge a hit also saves what a miss may cost after the model: the inputs
the cache model's gate would escalate (``escalates``) pay ``escalation_s`` more
(a round trip to the cloud) when no layer cache answers them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cachenet.core.calibration import NEVER
from cachenet.layercache.calibrate import rule_thresholds

BATCH = 64
REPEATS = 10


@dataclass
class Costs:
    stage_s: list[float]  # per input, each stage (sites' stages, then the last)
    lookup_s: list[float]  # per input, each candidate

    def site_s(self) -> np.ndarray:
        """Time per input to the end of each site's stage."""
        return np.cumsum(self.stage_s[:-1])

    @property
    def full_s(self) -> float:
        return float(sum(self.stage_s))


def _fastest_s(fn: Any) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(min(times))


def measure_costs(runner: Any, x: np.ndarray, cands: list[Any], feats: list[np.ndarray]
                  ) -> Costs:
    """Seconds per input of each stage (``runner``: the model's stages) and of each
    candidate's lookup, on the first :data:`BATCH` inputs of ``x`` and ``feats``."""
    x = np.ascontiguousarray(x[:BATCH])
    states = [x]
    n_stages = len(feats) + 1
    for i in range(n_stages):
        states.append(runner.stage(i, states[-1]))
    stage_s = [_fastest_s(lambda i=i: runner.stage(i, states[i])) / len(x)
               for i in range(n_stages)]
    lookup_s = []
    for c in cands:
        table = copy.deepcopy(c.cache)
        f = feats[c.site][:BATCH]
        lookup_s.append(_fastest_s(lambda t=table, f=f: t.lookup(f)) / len(f))
    return Costs(stage_s, lookup_s)


def mean_time(order: list[int], hits: np.ndarray, site_of: list[int], costs: Costs,
              miss_s: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Mean seconds per request of the cascade of candidates ``order`` (hits: candidates x
    inputs), and per candidate of ``order`` the seconds its lookups cost per request;
    ``miss_s``: what each input costs after the model when no rule answers it."""
    n = hits.shape[1]
    miss_s = np.zeros(n) if miss_s is None else miss_s
    if not order:
        return costs.full_s + float(miss_s.mean()), np.zeros(0)
    h = hits[order]
    first = np.where(h.any(0), h.argmax(0), len(order))
    lookups = np.asarray([costs.lookup_s[j] for j in order])
    consulted = np.arange(len(order))[:, None] <= first[None, :]  # rules x inputs
    site_s = np.append(costs.site_s()[[site_of[j] for j in order]], costs.full_s)
    per_request = ((consulted * lookups[:, None]).sum(0) + site_s[first]
                   + np.where(first == len(order), miss_s, 0.0))
    return float(per_request.mean()), (consulted.sum(1) / n) * lookups


def select(cands: list[Any], conf: np.ndarray, labels: np.ndarray, ref: np.ndarray,
           costs: Costs, *, kinds: tuple[str, ...], target: float, max_lookup_share: float,
           budget: float, kind_order: tuple[str, ...], escalates: np.ndarray | None = None,
           escalation_s: float = 0.0) -> list[int]:
    """Indices of the candidates kept, in cascade order (see the module docstring)."""
    eps = np.array([1.0 - target])
    hits = np.zeros(conf.shape, bool)
    for j, c in enumerate(cands):
        t = rule_thresholds(conf[j], labels[j] == ref, eps)[0]
        hits[j] = conf[j] >= t if t < NEVER else False
        c.hit_rate = float(hits[j].mean())
        c.lookup_s = costs.lookup_s[j]
    site_of = [c.site for c in cands]
    miss_s = None if escalates is None else np.where(escalates, escalation_s, 0.0)

    def ordered(chosen: list[int]) -> list[int]:
        return sorted(chosen, key=lambda j: (site_of[j], kind_order.index(cands[j].kind)))

    kept: list[int] = []
    best, _ = mean_time(kept, hits, site_of, costs, miss_s)
    while True:
        choice = None
        for j in range(len(cands)):
            if j in kept or cands[j].kind not in kinds or not hits[j].any():
                continue
            order = ordered([*kept, j])
            t, spent = mean_time(order, hits, site_of, costs, miss_s)
            own = spent[order.index(j)]
            saved = best - (t - own)  # what its hits save, before its own lookups
            if saved <= 0 or own > max_lookup_share * saved or t >= best:
                continue
            if sum(spent) > budget * costs.full_s:
                continue
            if choice is None or t < choice[1]:
                choice = (j, t)
        if choice is None:
            break
        kept = ordered([*kept, choice[0]])
        best = choice[1]
    for j, c in enumerate(cands):
        c.kept = j in kept
    return kept
