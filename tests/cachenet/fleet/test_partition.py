"""How partition models are made: the trainer registry, fine-tuning's guarantees, the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cachenet.core import cascade
from cachenet.exceptions import ConfigError, TrainingStopped
from cachenet.fleet import partition as pt
from cachenet.fleet.replay import ReplayData
from cachenet.toolchain.models import load_checkpoint

FAST = pt.FinetuneConfig(epochs=1, min_steps=20)


@pytest.fixture(scope="module")
def context(digits_bundle, digits_splits):
    from cloud_server.model import load_full_model

    full, _ = load_full_model(digits_bundle[0], device="cpu")
    base, _, _ = load_checkpoint(digits_bundle[0] / "full" / "cache.pt")
    replay = ReplayData.from_splits(digits_splits, full)
    return pt.TrainerContext(base.eval(), replay, full, FAST)


def never() -> bool:
    return False


def test_the_oracle_answers_a_class_only_where_the_full_model_does(context):
    """By construction, not by training: its label is the full model's wherever it is
    not "other", on every input."""
    classes = (1, 4, 7)
    oracle = pt.make_trainer("oracle", context)(classes, None, never)
    x = torch.from_numpy(context.replay.hold_x)
    with torch.no_grad():
        folded, full = oracle(x).numpy(), context.full(x).numpy()
    labels, conf = cascade.read(folded, "max_softmax",
                                {"classes": list(classes), "other_index": len(classes)})
    answered = conf > 0
    assert np.array_equal(labels[answered], full.argmax(1)[answered])
    assert set(full.argmax(1)[~answered]) - set(classes)  # what it leaves is the rest
    np.testing.assert_allclose(folded[:, :3], full[:, list(classes)], rtol=1e-6)


def test_fine_tuning_is_seeded_and_stops_when_asked(context):
    classes = (0, 2)
    train = pt.make_trainer("finetune", context)
    a, b = train(classes, None, never), train(classes, None, never)
    assert a.fc.out_features == len(classes) + 1
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q)  # same seed, same machine: the same model
    with pytest.raises(TrainingStopped, match=r"classes \(0, 2\) stopped"):
        train(classes, None, lambda: True)


def test_unknown_trainers_are_refused(context):
    with pytest.raises(ConfigError, match="known: finetune, head, oracle"):
        pt.make_trainer("magic", context)
    with pytest.raises(ConfigError, match="needs the full model"):
        pt.make_trainer("oracle", pt.TrainerContext(context.base, context.replay))
