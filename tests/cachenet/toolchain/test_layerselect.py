"""Which layer caches pay for their lookups: the greedy choice on measured costs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cachenet.toolchain.layerselect import Costs, mean_time, select


@dataclass
class Cand:
    site: int
    kind: str
    hit_rate: float = 0.0
    lookup_s: float = 0.0
    kept: bool = False


def test_redundant_and_costly_candidates_are_left_out():
    n = 1000
    ref = np.zeros(n, np.int64)
    first_half = np.arange(n) < n // 2
    conf = np.stack([first_half * 1.0,  # A: site 0, half the inputs
                     first_half * 1.0,  # B: site 1, the same half: adds nothing
                     (~first_half) * 1.0,  # C: site 1, the other half, but dear
                     (~first_half) * 1.0])  # D: site 2, the other half, cheap
    labels = np.zeros((4, n), np.int64)
    cands = [Cand(0, "knn"), Cand(1, "knn"), Cand(1, "learned"), Cand(2, "knn")]
    # Stages of 1 ms each (3 sites, then the last), lookups of 10 us, C's of 2 ms.
    costs = Costs([1e-3] * 4, [1e-5, 1e-5, 2e-3, 1e-5])
    kept = select(cands, conf, labels, ref, costs, kinds=("knn", "learned"), target=0.99,
                  max_lookup_share=0.1, budget=0.5, kind_order=("akey", "knn", "learned"))
    assert kept == [0, 3]
    assert [c.kept for c in cands] == [True, False, False, True]
    t, spent = mean_time(kept, conf > 0, [c.site for c in cands], costs)
    # Half stop after stage 0 (+1 lookup), half after stage 2 (+2 lookups).
    assert np.isclose(t, 0.5 * (1e-3 + 1e-5) + 0.5 * (3e-3 + 2e-5))
    assert np.allclose(spent, [1e-5, 0.5e-5])


def test_a_rule_that_disagrees_too_often_is_not_chosen():
    n = 1000
    ref = np.zeros(n, np.int64)
    conf = np.ones((1, n))
    labels = (np.arange(n) % 10 == 0)[None].astype(np.int64)  # 10% wrong, all sure
    cands = [Cand(0, "knn")]
    kept = select(cands, conf, labels, ref, Costs([1e-3, 1e-3], [1e-6]), kinds=("knn",),
                  target=0.99, max_lookup_share=0.1, budget=0.5,
                  kind_order=("akey", "knn", "learned"))
    assert kept == [] and cands[0].hit_rate == 0.0
