"""Calibrating the label-shift gate on streams replayed over the calibration split."""

from __future__ import annotations

import numpy as np

from cachenet.core.cascade import Stage
from cachenet.core.gate import Gate
from cachenet.core.prior import PriorConfig
from cachenet.toolchain.adapt import calibrate_section, class_runs, replay


def test_class_runs_is_a_permutation_in_runs():
    y = np.repeat(np.arange(5), 40)
    order = class_runs(y, 20, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(200))
    changes = int((np.diff(y[order]) != 0).sum())
    assert changes < 40  # runs, not independent draws (those change ~160 times)
    assert sorted(class_runs(y, 0, np.random.default_rng(0)).tolist()) == list(range(200))


def synthetic(n=3000, k=5, seed=0):
    """A weak model: its logit for the true class is only a little higher; the full
    model is the truth."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)).astype(np.float32)
    logits[np.arange(n), y] += 1.5
    return logits, y


def test_the_calibrated_gate_holds_the_target_on_fresh_streams_and_answers_more():
    logits, y = synthetic()
    stage = Stage(Gate("max_softmax", 0.999))
    shipped = np.full(5, 0.2)
    section = calibrate_section(logits, y, y, stage, shipped, target=0.95)
    cal = section["calibration"]
    assert cal["feasible"] and section["threshold"] < 1.0
    test_logits, test_y = synthetic(seed=1)
    config = PriorConfig(**{k: section[k] for k in ("window", "strength", "min_count",
                                                    "surprise", "score", "threshold")})
    order = class_runs(test_y, 50, np.random.default_rng(2))
    scores, labels = replay(test_logits, test_y, order, stage, shipped, config)
    answered = scores >= section["threshold"]
    assert answered.mean() > 0.2  # the shipped gate alone answers almost nothing
    assert (labels[answered] == test_y[order][answered]).mean() >= 0.95 - 0.02
