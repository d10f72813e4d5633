"""The cascade on a batch: hits leave, the rest go on; tables fill; refresh tightens."""

from __future__ import annotations

import numpy as np

from cachenet.core.audit import ErrorBound
from cachenet.layercache import KeyCache, KeyConfig, LayerCascade, Refresh, Rule


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
    x, w, cascade = setup(Refresh(rate=1.0, target=0.99, alpha=0.05))
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


def test_refresh_checked_after_every_re_check_stays_valid():
    """Re-checks are counted as they come, and the rule is tested after each: a fixed-n
    binomial test peeked at that often tightens a rule that holds its target far more
    often than its delta. The anytime-valid bound does not (and is the audit's own)."""
    rng = np.random.default_rng(0)
    runs, checks = 200, 2000
    tightened = 0
    for _ in range(runs):  # a rule at exactly its tolerated rate, 1 in 100
        r = Refresh(rate=1.0, target=0.99, alpha=0.05)
        tightened += any(r.record(np.array([ok])) for ok in rng.random(checks) >= 0.01)
    assert tightened / runs <= 0.05
    assert r.rule == ErrorBound(0.99, 0.05)
    # A rule that errs at 5 times its rate is tightened, and soon.
    r = Refresh(rate=1.0, target=0.99, alpha=0.05)
    n = next(i for i, ok in enumerate(rng.random(checks) >= 0.05) if r.record(np.array([ok])))
    assert r.tightenings == 1 and n < 1000
