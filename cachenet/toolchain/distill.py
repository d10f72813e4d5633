"""The cache model: a small network distilled from the full model, trained once and cached."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cachenet.core.bundle import sha256_file
from cachenet.toolchain.data import Splits
from cachenet.toolchain.full import FullModel, data_fingerprint
from cachenet.toolchain.models import (
    ModelSpec,
    build_model,
    cached_checkpoint,
    count_macs,
    load_checkpoint,
    save_checkpoint,
)
from cachenet.toolchain.seeds import key_parts, training_seed
from cachenet.toolchain.train import TrainConfig, fit, predict_logits

log = logging.getLogger(__name__)


def default_cache_arch(splits: Splits) -> str:
    """``tinycnn`` for every input size; ``mlp`` is there to choose for tiny inputs."""
    return "tinycnn"


def default_cache_knobs(splits: Splits, arch: str) -> dict[str, object]:
    """Knobs for ``arch`` on these inputs when the user gives none.

    For inputs of 8x8 pixels or fewer (the digits) a two-stage TinyCNN of
    widths 32/64 (0.31 M MACs): on the digits it answers 85% of inputs at the
    0.99 agreement target, where the three-stage default or an MLP answer ~70%.
    """
    _, h, w = splits.input_shape
    if arch == "tinycnn" and h * w <= 64:
        return {"widths": [32, 64]}
    return {}


def cache_spec(splits: Splits, arch: str, **knobs: object) -> ModelSpec:
    c, h, w = splits.input_shape
    kwargs = {"in_channels": c, "num_classes": len(splits.classes),
              "mean": list(splits.normalization.mean), "std": list(splits.normalization.std),
              "image_size": h}
    if w != h:
        kwargs["image_width"] = w
    kwargs.update({k: v for k, v in knobs.items() if v is not None})
    return ModelSpec(arch, kwargs)


#: Cache models that train as long as a full model: their distillation has no time
#: budget, so that a run stopped and started again from its checkpoint (after every
#: epoch) ends on exactly the model an uninterrupted run makes.
STRONG_CACHE_ARCHS = frozenset({"resnet20"})


def default_distill_config(splits: Splits, arch: str | None = None) -> TrainConfig:
    c, h, _ = splits.input_shape
    if h >= 16 and arch in STRONG_CACHE_ARCHS:
        # ResNet-20 from cached teacher outputs: ~110 s an epoch on 2 CPU cores, so 30
        # epochs take about an hour (resumable); a GPU takes seconds.
        return TrainConfig(epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4,
                           augment="crop-flip" if c == 3 else "crop", temperature=4.0,
                           channels_last=True)
    if h >= 16:
        return TrainConfig(epochs=15, batch_size=128, lr=0.05, weight_decay=5e-4,
                           augment="crop-flip" if c == 3 else "crop", temperature=4.0,
                           time_budget_s=1200.0)
    return TrainConfig(epochs=60, batch_size=64, lr=3e-3, weight_decay=1e-4, augment="none",
                       temperature=4.0, optimizer="adam")


def model_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


#: Teachers of at least this many multiply-adds per input are run once, not every batch:
#: their outputs on each training image and its mirror are computed and cached
#: (ResNet-18's 555 M: yes; ResNet-20's 41 M: no, it keeps full augmentation).
TEACHER_CACHE_MACS = 100_000_000


def teacher_views(teacher: nn.Module, x: np.ndarray, path: Path) -> np.ndarray:
    """The teacher's logits on each image of ``x`` and on its mirror (N x 2 x K), from
    ``path`` when an earlier run computed them."""
    if path.exists():
        views = np.load(path, allow_pickle=False)
        if views.shape[:2] == (len(x), 2):
            log.info("reusing the teacher's cached outputs %s", path)
            return views
    log.info("computing the teacher's outputs on %d training images and their mirrors "
             "(once: distillation then reads them)", len(x))
    plain = predict_logits(teacher, x, batch_size=256)
    mirrored = predict_logits(teacher, np.ascontiguousarray(x[..., ::-1]), batch_size=256)
    views = np.stack([plain, mirrored], axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, views)
    tmp.replace(path)
    return views


def _teacher_macs(full: FullModel, splits: Splits) -> int:
    if full.spec is None:
        return 0
    try:
        return count_macs(full.model, splits.input_shape)
    except Exception:  # a model the counter cannot trace: run it every batch
        return 0


def obtain_cache_model(splits: Splits, full: FullModel, spec: ModelSpec, *,
                       cfg: TrainConfig | None = None, cache_dir: Path,
                       progress: bool = True, reference_dir: Path | None = None,
                       cached_teacher: bool | None = None) -> tuple[nn.Module, dict]:
    """Distil ``spec`` from ``full`` on the training split, or reuse a cached result
    (from ``cache_dir``, else ``reference_dir``).

    The training loop sees the full model's temperature-softened outputs on
    each (augmented) batch and never the labels. ``cached_teacher``: run the
    teacher once on every image and its mirror instead of on every batch (None:
    when it costs :data:`TEACHER_CACHE_MACS` or more).
    """
    cfg = cfg or default_distill_config(splits, spec.arch)
    teacher = [model_fingerprint(full.model)]
    if full.spec is None and "path" in full.meta:  # TorchScript: code and constants too
        teacher.append(sha256_file(Path(full.meta["path"])))
    if getattr(full.model, "tta", "none") != "none":  # same weights, other answers
        teacher.append(f"tta={full.model.tta}")
    if cached_teacher is None:  # auto: by the teacher's cost
        cached_teacher = _teacher_macs(full, splits) >= TEACHER_CACHE_MACS
    if cached_teacher:
        teacher.append("cached-teacher-views")
    key = hashlib.sha256(json.dumps(
        [spec.to_dict(), cfg.to_dict(), data_fingerprint(splits), *teacher, *key_parts()],
        sort_keys=True).encode()).hexdigest()[:16]
    ckpt = cache_dir / "models" / f"cache-{spec.arch}-{splits.name}-{key}.pt"
    found = cached_checkpoint(cache_dir, ckpt.name, reference_dir)
    if found is not None:
        model, _, meta = load_checkpoint(found)
        log.info("reusing the distilled cache model %s", found)
        return model, {**meta, "source": "cached", "checkpoint": str(found)}
    torch.manual_seed(training_seed(cfg.seed))
    model = build_model(spec)
    log.info("distilling %s from the full model (%s)", spec.arch, cfg)
    views = None
    if cached_teacher:
        views = teacher_views(full.model, splits.train.x, cache_dir / "teacher" / (
            f"{splits.name}-{data_fingerprint(splits)[:12]}-{'-'.join(teacher[:2])[:40]}.npy"))
    history = fit(model, splits.train, cfg, teacher=None if views is not None else full.model,
                  checkpoint=ckpt.with_name(ckpt.name + ".partial"), progress=progress,
                  teacher_outputs=views)
    meta = {"train": history, "config": cfg.to_dict()}
    save_checkpoint(ckpt, model, spec, meta)
    ckpt.with_name(ckpt.name + ".partial").unlink(missing_ok=True)
    return model, {**meta, "source": "trained", "checkpoint": str(ckpt)}
