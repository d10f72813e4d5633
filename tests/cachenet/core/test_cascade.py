"""The cascade: the active model, then the general model, then the cloud, in one rule."""

from __future__ import annotations

import numpy as np
import pytest

from cachenet.core import cascade
from cachenet.core.gate import SCORES, Gate

PART = {"classes": [3, 9], "other_index": 2}


def stage(threshold: float, partition=None, kind: str = "max_softmax") -> cascade.Stage:
    return cascade.Stage.from_manifest({"score": kind, "threshold": threshold}, partition)


def test_read_maps_a_partitions_labels_and_gives_other_no_confidence():
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 1.0, 6.0]], np.float32)
    labels, conf = cascade.read(logits, "max_softmax", PART)
    assert labels.tolist() == [3, 9, 9]  # "other": the best of its own classes, unsure
    assert conf[0] > 0.9 and conf[1] > 0.9 and conf[2] == 0.0


@pytest.mark.parametrize("kind", list(SCORES))
@pytest.mark.parametrize("partition", [None, PART])
def test_the_per_request_reading_equals_the_batched_one(kind, partition):
    rng = np.random.default_rng(1)
    width = 3 if partition else 10
    logits = rng.normal(0, 3, (200, width)).astype(np.float32)
    s = stage(0.5, partition, kind)
    labels, conf = s.read(logits)
    rows = [s.read_row(r) for r in logits]
    assert [r[0] for r in rows] == labels.tolist()
    np.testing.assert_allclose([r[1] for r in rows], conf, rtol=1e-9, atol=1e-12)


def test_the_rule():
    general, part = stage(0.9), stage(0.9, PART)
    sure_g, unsure_g = np.array([0, 8.0] + [0] * 8), np.zeros(10)
    calls = []

    def run(row):
        def general_row():
            calls.append(1)
            return row
        return general_row

    # A sure active model answers; the general model is not even run.
    v = cascade.answer_row(part, np.array([6.0, 0, 0]), general, run(sure_g))
    assert (v.label, v.local, v.by) == (3, True, cascade.ACTIVE) and not calls
    # "other" hands over: a sure general model answers with its own label ...
    v = cascade.answer_row(part, np.array([0, 0, 6.0]), general, run(sure_g))
    assert (v.label, v.local, v.by) == (1, True, cascade.GENERAL) and calls == [1]
    # ... an unsure one escalates, and its label is the one to fall back on.
    v = cascade.answer_row(part, np.array([0, 0, 6.0]), general, run(unsure_g))
    assert (v.local, v.by) == (False, cascade.ESCALATE) and v.label == 0
    # A general model, or a partition with nothing behind it, escalates when unsure.
    assert cascade.answer_row(general, unsure_g).by == cascade.ESCALATE
    assert cascade.answer_row(part, np.array([0, 0, 6.0])).by == cascade.ESCALATE
    # A request's own gate replaces the threshold, and "other" stays unsure under it.
    lenient = part.with_gate(Gate("entropy", 0.01))
    assert cascade.answer_row(lenient, np.array([2.0, 0, 0])).local
    assert not cascade.answer_row(lenient, np.array([0, 0, 6.0])).local


def test_the_batch_answers_are_the_per_request_ones():
    rng = np.random.default_rng(2)
    active, general = stage(0.8, PART), stage(0.7)
    logits = rng.normal(0, 3, (300, 3))
    g_logits = rng.normal(0, 3, (300, 10))
    batch = cascade.answer_batch(active, logits, general, g_logits)
    rows = [cascade.answer_row(active, logits[i], general, lambda i=i: g_logits[i])
            for i in range(300)]
    assert batch.labels.tolist() == [v.label for v in rows]
    assert batch.local.tolist() == [v.local for v in rows]
    assert batch.own.tolist() == [v.by == cascade.ACTIVE for v in rows]
    assert 0 < batch.own.sum() < batch.local.sum() < 300  # all three outcomes occur
