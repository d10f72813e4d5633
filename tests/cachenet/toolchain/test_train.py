import itertools

import numpy as np
import pytest
import torch

from cachenet.exceptions import ConfigError
from cachenet.toolchain.full import arch_spec, obtain_full_model, resolve_tta
from cachenet.toolchain.models import build_model
from cachenet.toolchain.train import (
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


def test_augment_gives_windows_of_the_padded_image_or_their_flips():
    x = torch.rand(6, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, "crop-flip", gen)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    moved = 0
    for i in range(len(x)):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        match = [w for w in windows if torch.equal(out[i], w) or torch.equal(out[i], w.flip(2))]
        assert match, f"sample {i} is not a (flipped) window of its own padded image"
        moved += not torch.equal(out[i], x[i])
    assert moved >= 4  # random offsets: most samples move
    assert torch.equal(augment_batch(x, "none", gen), x)


def test_kd_loss_is_t_squared_kl_of_teacher_to_student():
    torch.manual_seed(0)
    s, t, temp = torch.randn(8, 10), torch.randn(8, 10), 4.0
    p_t = torch.softmax(t / temp, 1)
    log_p_s = torch.log_softmax(s / temp, 1)
    expected = (p_t * (torch.log(p_t) - log_p_s)).sum(1).mean() * temp ** 2
    assert float(kd_loss(s, t, temp)) == pytest.approx(float(expected), rel=1e-5)
    assert float(kd_loss(t, t, temp)) == pytest.approx(0.0, abs=1e-6)


def test_fit_learns_digits_and_resumes(digits_splits, tmp_path):
    spec = arch_spec("resnet20", digits_splits)
    spec.arch = "mlp"
    model = build_model(spec)
    cfg = TrainConfig(epochs=6, batch_size=64, lr=3e-3, optimizer="adam")
    ckpt = tmp_path / "ckpt.pt"
    history = fit(model, digits_splits.train, cfg, checkpoint=ckpt, progress=False)
    assert history["epochs"] == 6 and ckpt.exists()
    # It learns: far from chance (0.1), by a margin no machine's arithmetic changes. How
    # well it learns is the benchmarks' business, not a unit test's.
    assert history["losses"][-1] < history["losses"][0]
    acc = accuracy(predict_logits(model, digits_splits.test.x), digits_splits.test.y)
    assert acc > 0.5
    # A second call with the finished checkpoint resumes at the end: no more steps.
    again = fit(build_model(spec), digits_splits.train, cfg, checkpoint=ckpt, progress=False)
    assert again["steps"] == history["steps"]


def test_an_interrupted_run_resumes_to_the_same_weights(digits_splits, tmp_path):
    spec = arch_spec("resnet20", digits_splits)
    spec.arch = "mlp"
    cfg = TrainConfig(epochs=4, batch_size=64, lr=3e-3, optimizer="adam")
    torch.manual_seed(0)
    straight = build_model(spec)
    fit(straight, digits_splits.train, cfg, progress=False)

    class Interrupt(Exception):
        pass

    def stop_after_two(epoch, state):
        if epoch == 2:
            raise Interrupt

    ckpt = tmp_path / "ckpt.pt"
    torch.manual_seed(0)
    first = build_model(spec)
    with pytest.raises(Interrupt):
        fit(first, digits_splits.train, cfg, checkpoint=ckpt, progress=False,
            on_epoch=stop_after_two)
    # The checkpoint is written after on_epoch: epoch 1 is what survives.
    torch.manual_seed(0)
    resumed = build_model(spec)
    history = fit(resumed, digits_splits.train, cfg, checkpoint=ckpt, progress=False)
    assert history["epochs"] == 4
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


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


def test_test_time_augmentation_is_chosen_when_serving_not_when_training(digits_splits, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.05)
    plain = obtain_full_model(digits_splits, full="resnet20", cfg=cfg, cache_dir=tmp_path)
    flipped = obtain_full_model(digits_splits, full="resnet20", cfg=cfg, cache_dir=tmp_path,
                                tta="flip")
    assert plain.model.tta == "none" and "tta" not in plain.spec.kwargs  # auto: no flips here
    assert flipped.source == "cached" and flipped.spec.kwargs["tta"] == "flip"
    assert flipped.meta["tta"] == "flip"
    assert resolve_tta("auto", TrainConfig(augment="crop-flip")) == "flip"
    assert resolve_tta("auto", None) == "none"
    with pytest.raises(ConfigError, match="test-time augmentation must be"):
        resolve_tta("rotate", cfg)


def test_distillation_from_cached_teacher_views_learns_them(digits_splits, tmp_path):
    """A teacher run once on each image and its mirror (distill.teacher_views), then read
    by the training loop: the student follows those outputs, without a teacher pass."""
    from cachenet.toolchain.distill import teacher_views

    spec = arch_spec("resnet20", digits_splits)
    teacher = build_model(spec).eval()
    path = tmp_path / "views.npy"
    views = teacher_views(teacher, digits_splits.train.x, path)
    assert views.shape == (len(digits_splits.train.x), 2, 10) and path.exists()
    flipped = predict_logits(teacher, np.ascontiguousarray(digits_splits.train.x[:4, ..., ::-1]))
    assert np.allclose(views[:4, 1], flipped, atol=1e-5)
    assert teacher_views(None, digits_splits.train.x, path) is not None  # read back, not rerun
    student_spec = arch_spec("resnet20", digits_splits)
    student_spec.arch = "resnet8"
    student_spec.kwargs.pop("tta", None)
    student = build_model(student_spec)
    # A teacher that knows the labels (a random network's outputs say little): the
    # student learns from the cached views alone, far above chance (0.1).
    known = np.zeros_like(views)
    known[np.arange(len(views)), :, digits_splits.train.y] = 8.0
    history = fit(student, digits_splits.train, TrainConfig(epochs=6, batch_size=64, lr=3e-3,
                                                            optimizer="adam"),
                  teacher_outputs=known, progress=False)
    assert history["device"] in ("cpu", "cuda") and history["losses"][-1] < history["losses"][0]
    acc = accuracy(predict_logits(student, digits_splits.test.x), digits_splits.test.y)
    assert acc > 0.5


def test_resnet20_is_a_cache_model_whose_distillation_resumes_exactly(digits_splits,
                                                                      tmp_path):
    """The strong cache model: registered for the edge, distilled with no time budget (so
    its schedule is the steps'), and a run stopped after an epoch and started again from
    its checkpoint ends on the weights of the run that was never stopped."""
    from dataclasses import replace

    from cachenet.cli import _cache_archs
    from cachenet.toolchain.data import ArrayDataset, Splits
    from cachenet.toolchain.distill import default_distill_config

    assert "resnet20" in _cache_archs() and "resnet18" not in _cache_archs()
    cifar_like = ArrayDataset(np.zeros((4, 3, 32, 32), np.float32), np.zeros(4, np.int64),
                              digits_splits.classes)
    big = Splits("big", cifar_like, cifar_like, cifar_like, digits_splits.normalization)
    strong = default_distill_config(big, "resnet20")
    assert strong.time_budget_s is None and strong.augment == "crop-flip"
    assert default_distill_config(big, "tinycnn").time_budget_s is not None

    spec = arch_spec("resnet20", digits_splits)
    spec.kwargs.pop("tta", None)
    known = np.zeros((len(digits_splits.train), 2, 10), np.float32)
    known[np.arange(len(known)), :, digits_splits.train.y] = 8.0
    cfg = replace(strong, epochs=3, batch_size=128, augment="crop")

    class Interrupt(Exception):
        pass

    def stop_after_two(epoch, state):
        if epoch == 2:
            raise Interrupt

    torch.manual_seed(0)
    straight = build_model(spec)
    fit(straight, digits_splits.train, cfg, progress=False, teacher_outputs=known)
    ckpt = tmp_path / "ckpt.pt"
    torch.manual_seed(0)
    with pytest.raises(Interrupt):
        fit(build_model(spec), digits_splits.train, cfg, checkpoint=ckpt, progress=False,
            on_epoch=stop_after_two, teacher_outputs=known)
    torch.manual_seed(1)  # the checkpoint, not the initialisation, decides the weights
    resumed = build_model(spec)
    assert fit(resumed, digits_splits.train, cfg, checkpoint=ckpt, progress=False,
               teacher_outputs=known)["epochs"] == 3
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
