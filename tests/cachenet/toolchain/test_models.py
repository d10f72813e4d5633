import sys

import pytest
import torch

from cachenet.exceptions import ConfigError, ModelError
from cachenet.toolchain.models import (
    ModelSpec,
    build_model,
    count_macs,
    for_inference,
    load_checkpoint,
    save_checkpoint,
)

CIFAR = {"in_channels": 3, "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3,
         "image_size": 32}


@pytest.mark.parametrize("arch", ["resnet20", "resnet18", "tinycnn"])
def test_models_give_logits_for_any_batch(arch):
    model = build_model(ModelSpec(arch, CIFAR)).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_mlp_for_tiny_inputs():
    spec = ModelSpec("mlp", {**CIFAR, "in_channels": 1, "mean": [0.3], "std": [0.4],
                             "image_size": 8, "hidden": [32, 16]})
    assert build_model(spec)(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_macs_of_the_reference_models():
    resnet20 = count_macs(build_model(ModelSpec("resnet20", CIFAR)), (3, 32, 32))
    tiny = count_macs(build_model(ModelSpec("tinycnn", CIFAR)), (3, 32, 32))
    assert 40e6 < resnet20 < 42e6  # He et al.: ~41M multiply-adds
    assert tiny <= resnet20 / 20
    wider = count_macs(build_model(ModelSpec("tinycnn", {**CIFAR, "widths": [16, 32, 64],
                                                         "depth": 2})), (3, 32, 32))
    assert wider > tiny


def test_flip_tta_answers_the_mean_of_both_views_in_eval_mode_only(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("resnet20", {**CIFAR, "tta": "flip"})
    model = build_model(spec).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        one, mirrored = model.single(x), model.single(x.flip(3))
        assert not torch.allclose(one, mirrored)
        torch.testing.assert_close(model(x), 0.5 * (one + mirrored))
        torch.testing.assert_close(model(x.flip(3)), model(x))
        model.train()
        torch.testing.assert_close(model(x), model.single(x))  # training sees one view
    plain = build_model(ModelSpec("resnet20", CIFAR))
    assert count_macs(model, (3, 32, 32)) == count_macs(plain, (3, 32, 32))  # per pass
    save_checkpoint(tmp_path / "m.pt", model, spec, {})
    loaded, stored, _ = load_checkpoint(tmp_path / "m.pt")
    assert loaded.tta == "flip" and stored.kwargs["tta"] == "flip"
    with pytest.raises(ModelError, match="tta must be one of"):
        build_model(ModelSpec("resnet20", {**CIFAR, "tta": "rotate"}))


def test_for_inference_lays_a_conv_net_out_channels_last_with_the_same_answers(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("resnet20", CIFAR)
    model = build_model(spec).train()
    x = torch.rand(5, 3, 32, 32)
    save_checkpoint(tmp_path / "a" / "m.pt", model, spec, {})
    with torch.no_grad():
        before = model.eval()(x)
        fast = for_inference(model.train())
        assert fast is model and not fast.training
        assert fast.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert not fast.stem[0].weight.is_contiguous()
        torch.testing.assert_close(fast(x), before, atol=1e-5, rtol=1e-5)
    # Stored contiguous: the file's bytes (and so a bundle's hashes) do not depend on layout.
    save_checkpoint(tmp_path / "b" / "m.pt", fast, spec, {})
    assert (tmp_path / "b" / "m.pt").read_bytes() == (tmp_path / "a" / "m.pt").read_bytes()
    mlp = ModelSpec("mlp", {**CIFAR, "in_channels": 1, "mean": [0.3], "std": [0.4],
                            "image_size": 8, "hidden": [16]})
    assert for_inference(build_model(mlp)).fc.weight.is_contiguous()  # no convolutions


def test_folded_batchnorm_answers_the_same():
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet20", {**CIFAR, "tta": "flip"}))
    with torch.no_grad():  # running statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    with pytest.raises(RuntimeError, match="eval mode"):
        model.fold_batchnorm()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        before = model.eval()(x)
        folded = model.fold_batchnorm()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), before, atol=1e-5, rtol=1e-5)
        folded.fold_batchnorm()  # twice is harmless
        torch.testing.assert_close(folded(x), before, atol=1e-5, rtol=1e-5)


def test_checkpoint_roundtrip_and_user_factory(tmp_path, monkeypatch):
    module = tmp_path / "my_models.py"
    module.write_text("import torch\n"
                      "def small(num_classes=10):\n"
                      "    return torch.nn.Sequential(torch.nn.Flatten(),"
                      " torch.nn.Linear(64, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ModelSpec("my_models:small", {"num_classes": 4})
    model = build_model(spec)
    state = tmp_path / "state.pt"
    torch.save(model.state_dict(), state)
    loaded, _, _ = load_checkpoint(state, spec)
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, model, spec, {"note": "x"})
    _again, spec2, meta = load_checkpoint(ckpt)
    assert spec2 == spec and meta == {"note": "x"}
    sys.modules.pop("my_models", None)


@pytest.mark.parametrize("arch,match", [
    ("nonsense", "unknown architecture"),
    ("no_such_module_xyz:f", "cannot import module"),
    ("json:no_such_factory", "no callable"),
    ("json:dumps", "not a torch.nn.Module|cannot build"),
])
def test_bad_architectures_fail_clearly(arch, match):
    with pytest.raises(ModelError, match=match):
        build_model(ModelSpec(arch, {"obj": 1} if arch == "json:dumps" else {}))


def test_state_dict_that_does_not_fit(tmp_path):
    state = tmp_path / "s.pt"
    torch.save({"weight": torch.zeros(3)}, state)
    with pytest.raises(ModelError, match="does not fit"):
        load_checkpoint(state, ModelSpec("tinycnn", CIFAR))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt", ModelSpec("tinycnn", CIFAR))


def test_user_torchscript_full_model(tmp_path, digits_splits):
    from cachenet.toolchain.full import obtain_full_model

    net = build_model(ModelSpec("mlp", {"in_channels": 1, "num_classes": 10, "mean": [0.3],
                                        "std": [0.4], "image_size": 8})).eval()
    path = tmp_path / "user.ts"
    torch.jit.trace(net, torch.rand(1, 1, 8, 8)).save(str(path))
    fm = obtain_full_model(digits_splits, full=str(path), cache_dir=tmp_path)
    assert fm.source == "torchscript" and fm.spec is None
    with pytest.raises(ConfigError, match="needs a registered ResNet"):
        obtain_full_model(digits_splits, full=str(path), cache_dir=tmp_path, tta="flip")
    x = torch.from_numpy(digits_splits.test.x[:4])
    torch.testing.assert_close(fm.model(x), net(x))


def test_user_factory_kwargs_and_bundle_checkpoints(tmp_path, monkeypatch, digits_splits,
                                                    digits_bundle):
    from cachenet.toolchain.full import obtain_full_model

    (tmp_path / "kw_models.py").write_text(
        "import torch\n"
        "def net(num_classes, hidden):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(ModelSpec("kw_models:net", {"num_classes": 10, "hidden": 7}))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")  # a common wrapper
    fm = obtain_full_model(digits_splits, full="kw_models:net", weights=tmp_path / "w.pt",
                           full_kwargs={"num_classes": 10, "hidden": 7}, cache_dir=tmp_path)
    assert fm.spec.kwargs == {"num_classes": 10, "hidden": 7}
    # A bundle's full model is a cachenet checkpoint that carries its own spec.
    again = obtain_full_model(digits_splits, full=str(digits_bundle[0] / "full" / "model.pt"),
                              cache_dir=tmp_path)
    assert again.source == "user-checkpoint" and again.spec.arch == "resnet20"
    sys.modules.pop("kw_models", None)
