"""The cascade on a batch: hits leave, the rest go on; tables fill; refresh tightens."""

from __future__ import annotations

import numpy as np
import pytest

from cachenet.layercache import KeyCache, KeyConfig, LayerCascade, Refresh, Rule
from cachenet.layercache.control import binomial_tail


class ToyRunner:
    """Stage 0: features = the input; stage 1: logits = input @ W. Counts rows per stage."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = w
        self.rows: list[int] = []

    def stage(self, i, state):
        self.rows.append(len(state))
        return state if i == 0 else state @ self.w

    def features(self, state):
        return state

    def take(self, state, rows):
        return state[rows]

    def logits(self, state):
        return state


def setup(refresh: Refresh | None = None):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    table = KeyCache.fit(KeyConfig(num_classes=4, dim=6, step=0.01), x)
    rule = Rule(0, "s0:akey", table, 0.5, refresh)
    return x, w, LayerCascade(["s0"], [100], 1000, [rule], 4)


def test_a_batch_with_mixed_hits():
    x, w, cascade = setup()
    cascade.rules[0].cache.fill(x[[1, 4]], np.array([3, 0]))
    runner = ToyRunner(w)
    out = cascade.run(runner, x, len(x))
    assert out.by.tolist() == [-1, 0, -1, -1, 0, -1, -1, -1]
    assert runner.rows == [8, 6]  # the two hits left the batch before stage 1
    assert out.labels[[1, 4]].tolist() == [3, 0]
    model = (x @ w).argmax(1)
    misses = out.by < 0
    assert np.array_equal(out.labels[misses], model[misses])
    lookup = cascade.rules[0].cache.lookup_macs
    assert out.macs[1] == 100 + lookup and out.macs[0] == 1000 + lookup


def test_settle_fills_the_tables_so_a_re_seen_input_hits():
    x, w, cascade = setup()
    first = cascade.run(ToyRunner(w), x, len(x))
    assert (first.by < 0).all()
    cascade.settle(first, np.arange(8), first.labels)
    again = cascade.run(ToyRunner(w), x, len(x))
    assert (again.by == 0).all() and np.array_equal(again.labels, first.labels)


def test_tables_learn_only_the_full_models_sure_answers():
    x, w, cascade = setup()
    cascade.fill_confidence = 0.9
    first = cascade.run(ToyRunner(w), x, len(x))
    sure = np.array([0.95, 0.5] * 4)
    cascade.settle(first, np.arange(8), first.labels, sure)
    again = cascade.run(ToyRunner(w), x, len(x))
    assert ((again.by == 0) == (sure >= 0.9)).all()


def test_refresh_re_checks_a_share_of_hits_and_tightens_a_rule_that_errs():
    x, w, cascade = setup(Refresh(rate=1.0, target=0.99, delta=0.05))
    rule = cascade.rules[0]
    wrong = ((x @ w).argmax(1) + 1) % 4
    rule.cache.fill(x, wrong)  # every entry disagrees with the model
    out = cascade.run(ToyRunner(w), x, len(x))
    assert (out.by < 0).all() and len(out.checks) == 8  # all hits re-checked: none answered
    cascade.settle(out, np.arange(8), out.labels)
    assert rule.threshold > 0.5 and rule.refresh.tightenings == 1
    assert rule.cache.lookup(x).conf.max() == 0.0  # the cells are mixed now


def test_refresh_picks_every_nth_hit():
    r = Refresh(rate=0.25)
    assert r.pick(8).tolist() == [False, False, False, True] * 2
    assert not Refresh(rate=0.0).pick(5).any()


def test_binomial_tail():
    assert binomial_tail(0, 10, 0.1) == 1.0
    assert binomial_tail(11, 10, 0.1) == 0.0
    assert binomial_tail(1, 10, 0.1) == pytest.approx(1 - 0.9 ** 10)
    assert binomial_tail(10, 10, 0.5) == pytest.approx(0.5 ** 10)
