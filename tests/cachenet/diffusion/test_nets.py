"""Denoisers: shapes, units that cover every MAC, checkpoints that load or say why not."""

from __future__ import annotations

import pytest
import torch

from cachenet.diffusion.nets import DiffusionModel, build, load_checkpoint, save_checkpoint
from cachenet.exceptions import ModelError
from cachenet.toolchain.models.flops import count_macs
from tests.generating import ROUTER, tiny_models


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_noise_prediction_has_the_image_shape_and_units_cover_every_mac(arch):
    model = tiny_models()[arch]
    x = torch.randn(3, *model.image_shape)
    out = model.net(x, torch.tensor([0, 500, 999]), torch.tensor([0, 5, 10]))
    assert out.shape == x.shape
    macs = model.unit_macs()
    assert set(macs) == set(model.net.units())
    assert all(v >= 0 for v in macs.values()) and sum(macs.values()) > 0


def test_one_counter_counts_units_the_whole_net_and_attention_alike():
    from cachenet.diffusion.nets.layers import AttentionCore
    from cachenet.toolchain.models.flops import macs_by_unit

    model = tiny_models()["unet"]

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model.net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = torch.zeros(len(x), dtype=torch.long)
            return self.net(x, z, z)

    wrapped = Wrapped()
    macs = model.unit_macs()
    assert count_macs(wrapped, model.image_shape) == sum(macs.values())
    cores = [n for n, m in wrapped.named_modules() if isinstance(m, AttentionCore)]
    by = macs_by_unit(wrapped, ["", *cores],
                      lambda: wrapped(torch.zeros(1, *model.image_shape)))
    # attention at 8x8 (64 tokens, 32 channels): one going down, two going up, the middle's
    assert len(cores) == 4 and sum(by[c] for c in cores) == 4 * (2 * 64 * 64 * 32)


def test_a_checkpoint_round_trips(tmp_path):
    model = tiny_models()["routed"]
    path = tmp_path / "dit.pt"
    save_checkpoint(path, model)
    back = load_checkpoint(path)
    assert back.arch == "dit" and back.classes == model.classes and back.l2c == ROUTER
    x = torch.randn(1, *model.image_shape)
    t, y = torch.tensor([3]), torch.tensor([1])
    with torch.no_grad():
        assert torch.allclose(back.net(x, t, y), model.net.half().float()(x, t, y))


@pytest.mark.parametrize(("blob", "message"), [
    (b"not a checkpoint", "not a readable"),
    ({"format": "other"}, "not a cachenet-diffusion/1"),
    ({"format": "cachenet-diffusion/1", "arch": 3}, "'arch'"),
    ({"format": "cachenet-diffusion/1", "arch": "gan", "config": {}, "schedule": {},
      "state_dict": {}, "classes": []}, "unknown denoiser"),
    ({"format": "cachenet-diffusion/1", "arch": "dit", "config": {"width": 48, "heads": 2},
      "schedule": {"train_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
      "state_dict": {"nope": torch.zeros(1)}, "classes": []}, "do not fit"),
])
def test_a_bad_checkpoint_is_a_model_error(tmp_path, blob, message):
    path = tmp_path / "bad.pt"
    if isinstance(blob, bytes):
        path.write_bytes(blob)
    else:
        torch.save(blob, path)
    with pytest.raises(ModelError, match=message):
        load_checkpoint(path)


def test_unknown_options_are_named():
    with pytest.raises(ModelError, match="no option"):
        build("unet", chanels=8)
    assert isinstance(DiffusionModel(build("dit", width=24, heads=2, depth=1)).net, torch.nn.Module)
