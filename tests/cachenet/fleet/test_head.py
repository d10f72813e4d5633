"""Heads on the general cache model's frozen features: trained in seconds, shipped as
head bundles that run on the model file the agent already has."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cachenet.core.bundle import repack, verify_bundle
from cachenet.core.manifest import validate
from cachenet.core.runtime import load_cache_model
from cachenet.exceptions import IntegrityError, ManifestError
from cachenet.fleet import partition as pt
from cachenet.fleet import specialize as sp


def _fc(base) -> tuple[np.ndarray, np.ndarray]:
    return base.fc.weight.detach().numpy(), base.fc.bias.detach().numpy()


def test_the_cache_model_exports_the_features_its_last_layer_reads(digits_bundle, base, replay):
    model = load_cache_model(digits_bundle[0])
    assert model.manifest.features == {"name": "features", "dim": base.fc.in_features}
    x = replay.hold_x[:50]
    feats = model.features(x)
    weight, bias = _fc(base)
    assert feats.shape == (50, base.fc.in_features)
    assert np.abs(model.logits(x) - (feats @ weight.T + bias)).max() < 1e-4
    with torch.no_grad():  # the torch side of the same split
        ref = pt.base_features(base, x)
    assert np.abs(feats - ref).max() < 1e-4


def _head_bundle(general, classes, out, replay, seed=0):
    rng = np.random.default_rng(seed)
    dim = general.features["dim"]
    weight = rng.normal(size=(len(classes) + 1, dim)).astype(np.float32)
    bias = rng.normal(size=len(classes) + 1).astype(np.float32)
    return sp.write_head_bundle(out, weight, bias, general, classes,
                                canary_x=replay.hold_x[:32]), weight, bias


def test_a_head_bundle_answers_with_its_head_on_the_general_models_features(
        digits_bundle, replay, tmp_path):
    general = verify_bundle(digits_bundle[0])
    classes = (2, 7)
    head, weight, bias = _head_bundle(general, classes, tmp_path / "head", replay)
    # The model file is the general model's, byte for byte: an agent that has it needs
    # the head's few kilobytes alone.
    assert head.files["model.onnx"]["sha256"] == general.files[general.model_file()]["sha256"]
    assert head.files["head.npz"]["bytes"] < 8192
    # So are its canary inputs; what is its own is kilobytes.
    assert head.head == {"file": "head.npz", "base": general.version,
                         "from_base": ["model.onnx", "canary.npz"]}
    assert head.files["canary.npz"]["sha256"] == general.files["canary.npz"]["sha256"]
    assert head.data["canary"] == {"file": "head-canary.npz", "inputs": "canary.npz",
                                   "n": general.data["canary"]["n"]}
    assert sum(e["bytes"] for n, e in head.files.items()
               if n not in head.head["from_base"]) < 16384
    assert head.gate["threshold"] > 1.0  # escalates everything until calibrated
    loaded = load_cache_model(head.root)  # hashes checked, canary replayed
    assert loaded.partition == classes and loaded.covers(7) and not loaded.covers(3)
    x = replay.hold_x[:40]
    feats = load_cache_model(general.root).features(x)
    assert np.abs(loaded.logits(x) - (feats @ weight.T + bias)).max() < 1e-5
    # Batch by batch (sizes change BLAS's summation order, not the answer):
    assert np.abs(sp.bundle_logits(head.root, x, batch_size=7) - loaded.logits(x)).max() < 1e-5
    for i in range(5):  # the agent's per-request path
        assert np.abs(loaded.raw(x[i:i + 1])[0] - loaded.logits(x)[i]).max() < 1e-5


@pytest.mark.parametrize("arrays,match", [
    ({"weight": np.zeros((4, 3), np.float32), "bias": np.zeros(4, np.float32)},
     "holds weight"),
    ({"bias": np.zeros(3, np.float32)}, "arrays 'weight' and 'bias'"),
    ({"weight": "nan", "bias": np.zeros(3, np.float32)}, "not finite"),
    ({"weight": np.zeros((3, 1), np.int64), "bias": np.zeros(3, np.float32)}, "holds weight"),
])
def test_a_damaged_head_is_refused_naming_what_is_wrong(digits_bundle, replay, tmp_path,
                                                        arrays, match):
    general = verify_bundle(digits_bundle[0])
    head, weight, _ = _head_bundle(general, (2, 7), tmp_path / "head", replay)
    if isinstance(arrays.get("weight"), str):
        arrays["weight"] = np.where(np.arange(weight.size).reshape(weight.shape) == 5,
                                    np.nan, weight).astype(np.float32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    damaged = repack(head.root, tmp_path / "damaged", {"head.npz": bad})  # hashes recomputed
    with pytest.raises(IntegrityError, match=match):
        load_cache_model(damaged.root)


def test_a_head_needs_the_features_it_reads(digits_bundle):
    data = dict(verify_bundle(digits_bundle[0]).data)
    data["output"] = {k: v for k, v in data["output"].items() if k != "features"}
    data["head"] = {"file": "model.onnx", "base": "v1"}
    with pytest.raises(ManifestError, match=r"'output\.features' does not declare them"):
        validate(data)
    data["output"] = {**data["output"], "features": {"name": "features", "dim": 0}}
    with pytest.raises(ManifestError, match=r"output\.features\.dim"):
        validate(data)
    data["output"]["features"]["dim"] = 4
    data["head"] = {"file": "../escape.npz", "base": "v1"}
    with pytest.raises(ManifestError):
        validate(data)


def test_a_trained_head_changes_the_last_layer_alone(digits_bundle, base, replay, tmp_path):
    classes = (0, 1, 6)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    feats = pt.base_features(base, replay.train_x)
    head = pt.train_head(base, feats, classes, replay, cfg=pt.HeadConfig(steps=30))
    assert isinstance(head, pt.HeadPartition) and head.fc.out_features == len(classes) + 1
    for k, v in base.state_dict().items():  # the general model is untouched
        assert torch.equal(v, before[k])
    body = {k: v for k, v in head.base.body.state_dict().items()}
    assert all(torch.equal(body[k], before[k]) for k in before if not k.startswith("fc."))
    x = torch.from_numpy(replay.hold_x[:20])
    with torch.no_grad():
        assert torch.allclose(head(x), head.fc(torch.from_numpy(pt.base_features(base, x.numpy()))),
                              atol=1e-5)
    general = verify_bundle(digits_bundle[0])
    bundle = sp.write_partition_bundle(tmp_path / "lib", head, general, classes,
                                       canary_x=replay.hold_x[:32], trainer="head")
    assert bundle.head is not None and bundle.data["partition"]["trainer"] == "head"
    with torch.no_grad():
        ref = head(x).numpy()
    assert np.abs(load_cache_model(bundle.root).logits(x.numpy()) - ref).max() < 1e-4


def test_the_head_trainer_is_registered_and_computes_features_once(base, replay):
    ctx = pt.TrainerContext(base, replay, finetune=pt.FinetuneConfig(max_examples=400))
    train = pt.make_trainer("head", ctx)
    first = train((3, 4), None, lambda: False)
    hard = (replay.hold_x[:5], replay.hold_full[:5])
    second = train((3, 4, 5), hard, lambda: False)
    assert first.fc.out_features == 3 and second.fc.out_features == 4
    with pytest.raises(Exception, match="stopped"):
        train((1, 2), None, lambda: True)


@pytest.mark.parametrize("features,match", [
    ({"name": "features", "dim": 999}, "features have shape"),
    ({"name": "nope", "dim": 4}, "'nope' is not one"),
])
def test_features_the_model_does_not_have_are_refused(digits_bundle, tmp_path, features, match):
    m = verify_bundle(digits_bundle[0])
    bad = repack(digits_bundle[0], tmp_path / "bad",
                 fields={"output": {**m.data["output"], "features": features}})
    with pytest.raises(IntegrityError, match=match):
        load_cache_model(bad.root)
