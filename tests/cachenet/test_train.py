import itertools

import numpy as np
import pytest
import torch

from cachenet.full import arch_spec, obtain_full_model
from cachenet.models import build_model
from cachenet.train import (
    TrainConfig,
    accuracy,
    augment_batch,
    fit,
    kd_loss,
    lr_factor,
    predict_logits,
)


def test_one_cycle_schedule_shape():
    assert lr_factor(0.0, 0.15) == 0.0
    assert lr_factor(0.15, 0.15) == pytest.approx(1.0)
    assert lr_factor(1.0, 0.15) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(p, 0.15) for p in np.linspace(0.15, 1.0, 20)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_augment_crops_and_flips_real_pixels():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, "crop-flip", gen)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    assert torch.equal(augment_batch(x, "none", gen), x)


def test_kd_loss_is_zero_only_when_outputs_match():
    t = torch.randn(8, 10)
    assert float(kd_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(torch.randn(8, 10), t, 4.0)) > 0.01


def test_fit_learns_digits_and_resumes(digits_splits, tmp_path):
    spec = arch_spec("resnet20", digits_splits)
    spec.arch = "mlp"
    model = build_model(spec)
    cfg = TrainConfig(epochs=6, batch_size=64, lr=3e-3, optimizer="adam")
    ckpt = tmp_path / "ckpt.pt"
    history = fit(model, digits_splits.train, cfg, checkpoint=ckpt, progress=False)
    assert history["epochs"] == 6 and ckpt.exists()
    assert history["losses"][-1] < history["losses"][0]
    acc = accuracy(predict_logits(model, digits_splits.test.x), digits_splits.test.y)
    assert acc > 0.85
    # A second call with the finished checkpoint resumes at the end: no more steps.
    again = fit(build_model(spec), digits_splits.train, cfg, checkpoint=ckpt, progress=False)
    assert again["steps"] == history["steps"]


def test_time_budget_ends_training_early(digits_splits):
    spec = arch_spec("resnet20", digits_splits)
    spec.arch = "mlp"
    cfg = TrainConfig(epochs=10_000, batch_size=64, lr=3e-3, optimizer="adam",
                      time_budget_s=0.5)
    history = fit(build_model(spec), digits_splits.train, cfg, progress=False)
    assert history["epochs"] < 10_000


def test_trained_full_model_is_cached(digits_splits, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.05)
    first = obtain_full_model(digits_splits, full="resnet20", cfg=cfg, cache_dir=tmp_path)
    second = obtain_full_model(digits_splits, full="resnet20", cfg=cfg, cache_dir=tmp_path)
    assert (first.source, second.source) == ("trained", "cached")
    x = torch.from_numpy(digits_splits.test.x[:8])
    with torch.no_grad():
        torch.testing.assert_close(first.model(x), second.model(x))
