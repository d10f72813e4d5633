"""Training a denoiser and an L2C router: runs, budgets, resumes; nothing about quality."""

from __future__ import annotations

import math

import numpy as np
import torch

from cachenet.diffusion.nets import DiffusionModel, build
from cachenet.diffusion.recipes import training_images
from cachenet.diffusion.stepcache.l2c import RouterConfig, train_router
from cachenet.diffusion.train import DiffusionTrainConfig, train_denoiser


def tiny_digits_unet() -> DiffusionModel:
    """Dropout on: a resumed run must restore the generator it draws from too."""
    return DiffusionModel(build("unet", in_channels=1, image_size=8, channels=8, mults=[1, 2],
                                blocks=1, attn_at=[], dropout=0.3))


def test_training_on_the_digits_runs(tmp_path):
    x, y, classes = training_images("digits")
    assert x.shape[1:] == (1, 8, 8) and len(classes) == 10
    model = tiny_digits_unet()
    before = [p.clone() for p in model.net.parameters()]
    h = train_denoiser(model, x, y, DiffusionTrainConfig(steps=6, batch_size=16),
                       checkpoint=tmp_path / "state.pt", progress=False)
    assert h["steps"] == 6 and math.isfinite(h["loss"]) and (tmp_path / "state.pt").exists()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net.parameters(), strict=True))


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(tmp_path, monkeypatch):
    """Stopped after 4 of 7 steps and resumed, training gives bit for bit the weights
    (EMA, dropout and all) that 7 steps in one go give."""
    x, y, _ = training_images("digits")
    cfg = DiffusionTrainConfig(steps=7, batch_size=8, checkpoint_every=4)
    save = torch.save
    midway = tmp_path / "midway.pt"

    def keep_midway(blob: object, path: object) -> None:  # the state an interruption leaves
        save(blob, path)
        if isinstance(blob, dict) and blob.get("state", {}).get("step") == 4:
            save(blob, midway)

    monkeypatch.setattr(torch, "save", keep_midway)
    torch.manual_seed(0)
    whole = tiny_digits_unet()
    train_denoiser(whole, x, y, cfg, checkpoint=tmp_path / "whole.pt", progress=False)
    monkeypatch.setattr(torch, "save", save)
    torch.manual_seed(0)
    resumed = tiny_digits_unet()
    torch.manual_seed(123)  # whatever the global generator holds, the run restores its own
    h = train_denoiser(resumed, x, y, cfg, checkpoint=midway, progress=False)
    assert h["steps"] == 7
    for a, b in zip(whole.net.state_dict().values(), resumed.net.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_a_time_budget_ends_training(tmp_path):
    x, y, _ = training_images("digits")
    h = train_denoiser(tiny_digits_unet(), x, y,
                       DiffusionTrainConfig(steps=10**9, batch_size=8, time_budget_s=0.5),
                       progress=False)
    assert 0 < h["steps"] < 10**9  # the budget, not the step count, ended it


def test_uint8_images_are_scaled_as_float_ones_are():
    from cachenet.diffusion.train import _batch

    cfg = DiffusionTrainConfig(flip=False, label_dropout=0.0)
    u8 = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    f = u8.float() / 255
    gen = torch.Generator().manual_seed(0)
    a, _ = _batch(u8, torch.tensor([1]), torch.tensor([0]), cfg, 10, gen)
    b, _ = _batch(f, torch.tensor([1]), torch.tensor([0]), cfg, 10, gen)
    assert torch.allclose(a, b) and a.min() == -1 and a.max() == 1


def test_a_router_comes_out_as_stored_with_full_steps_marked():
    torch.manual_seed(0)
    model = DiffusionModel(build("dit", width=24, depth=2, heads=2, image_size=8, patch=4))
    router = train_router(model, RouterConfig(steps=4, iters=4, batch=4, trajectories=4),
                          progress=False)
    betas = np.array(router["betas"])
    assert betas.shape == (4, 2, 2) and router["steps"] == 4 and router["period"] == 2
    assert (betas[0::2] == 1.0).all() and ((betas >= 0) & (betas <= 1)).all()
    assert all(p.requires_grad for p in model.net.parameters())  # handed back unfrozen
