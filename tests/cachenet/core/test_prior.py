"""Label-shift adaptation: the stream's prior followed online, and its gate."""

from __future__ import annotations

import numpy as np
import pytest

from cachenet.core import cascade
from cachenet.core.gate import Gate
from cachenet.core.prior import PriorConfig, StreamPrior, from_manifest
from cachenet.exceptions import ManifestError

K = 10


def test_the_estimate_converges_to_a_stream_with_a_known_prior():
    truth = np.array([0.6, 0.3, 0.1] + [0.0] * (K - 3))
    prior = StreamPrior(np.full(K, 1 / K), PriorConfig(window=400, strength=2.0, surprise=0.0))
    for label in np.random.default_rng(0).choice(K, 4000, p=truth):
        prior.observe(int(label))
    assert np.abs(prior.estimate() - truth).max() < 0.06
    assert prior.shift is not None and prior.shift[0] > 1.5 and prior.shift[5] < -2


def test_it_reacts_within_a_few_answers_and_restarts_when_the_stream_moves():
    prior = StreamPrior(np.full(K, 1 / K), PriorConfig(window=50, strength=2.0, min_count=3,
                                                       surprise=0.05))
    for _ in range(2):
        prior.observe(4)
    assert prior.shift is None  # not yet in use: the shipped prior
    prior.observe(4)
    assert prior.estimate()[4] > 0.6 and prior.shift is not None
    for _ in range(30):
        prior.observe(4)
    prior.observe(7)  # a class the stream has not shown: it moved
    assert prior.resets == 1 and prior.shift is None
    assert prior.estimate()[7] > prior.estimate()[4]


def test_the_gate_raises_confidence_in_the_stream_s_classes_and_never_flips_a_label():
    prior = StreamPrior(np.full(K, 1 / K), PriorConfig(threshold=0.9, min_count=3))
    row = np.zeros(K, np.float32)
    row[2], row[3] = 2.0, 1.5
    assert prior.gate_row(row) is None  # nothing observed yet
    for _ in range(10):
        prior.observe(2)
    label, conf, sure = prior.gate_row(row)
    assert label == 2 and sure and conf > 0.9
    for _ in range(50):
        prior.observe(3)  # now the stream shows class 3: the model still says 2
    label, conf, sure = prior.gate_row(row)
    assert (label, conf, sure) == (2, 0.0, False)


def test_the_cascade_answers_with_the_prior_only_where_the_shipped_gate_is_unsure():
    stage = cascade.Stage(Gate("max_softmax", 0.99))
    row = np.zeros(K, np.float32)
    row[1] = 3.0  # about 0.69: unsure without the prior
    assert cascade.answer_row(stage, row).by == cascade.ESCALATE
    sure = cascade.answer_row(stage, row, adjust=lambda r: (1, 0.995, True))
    assert (sure.by, sure.local, sure.confidence) == (cascade.PRIOR, True, 0.995)
    other = cascade.answer_row(stage, row, adjust=lambda r: (4, 0.995, True))
    assert other.by == cascade.ESCALATE  # never a label the model does not predict
    row[1] = 9.0
    assert cascade.answer_row(stage, row, adjust=lambda r: (1, 0.5, False)).by == cascade.ACTIVE


def test_a_partition_model_hands_its_general_model_s_row_to_the_prior():
    part = cascade.Stage(Gate("max_softmax", 0.99), (3, 5), 2)
    general = cascade.Stage(Gate("max_softmax", 0.99))
    p_row = np.array([0.0, 0.0, 5.0], np.float32)  # "other"
    g_row = np.zeros(K, np.float32)
    g_row[6] = 2.0
    seen = []

    def adjust(r):
        seen.append(r)
        return 6, 0.999, True

    v = cascade.answer_row(part, p_row, general, lambda: g_row, adjust)
    assert v.by == cascade.PRIOR and v.label == 6 and seen[0] is g_row


def section(**over):
    s = {"score": "max_softmax", "threshold": 0.99, "window": 50, "strength": 2.0,
         "min_count": 3, "surprise": 0.05, "prior": [0.1] * K}
    s.update(over)
    return s


def test_the_manifest_section_is_read():
    config, shipped = from_manifest(section(prior=[1] * K), K)
    assert config.threshold == 0.99 and config.window == 50
    assert np.allclose(shipped, 0.1)


@pytest.mark.parametrize("over, field", [
    ({"score": "nope"}, "score"), ({"prior": [0.1] * 3}, "prior"),
    ({"prior": [0.0] * K}, "prior"), ({"window": 0}, "window"), ({"window": 2.5}, "window"),
    ({"threshold": float("nan")}, "threshold"), ({"strength": "2"}, "strength"),
    ({"surprise": 1.0}, "surprise"), ({"min_count": True}, "min_count")])
def test_a_bad_section_names_its_field(over, field):
    with pytest.raises(ManifestError, match=f"label_shift.{field}"):
        from_manifest(section(**over), K)
    with pytest.raises(ManifestError, match="label_shift must be an object"):
        from_manifest([1, 2], K)
