"""The full model: the user's own, or one of ours trained once and cached.

Users bring a model as an import string ``package.module:factory`` plus a state
dict, or as a TorchScript file. Otherwise a registered architecture is trained
on the data's training split; the result is cached under
``<cache>/models/`` keyed by the architecture, the training configuration and a
fingerprint of the training data, so that a rerun does not retrain.

Test-time augmentation (``tta``) is chosen when the model is served, not when it
is trained: a model we train with horizontal flips answers, by default, the mean
of its logits on the input and its mirror image (:mod:`cachenet.toolchain.models.resnet`).
It is recorded in the spec saved with the bundle, so the cloud serves exactly the
model the cache was distilled from and calibrated against; the training cache key
leaves it out, so one trained model serves either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cachenet.exceptions import ConfigError
from cachenet.toolchain.data import Splits
from cachenet.toolchain.models import (
    ARCHITECTURES,
    TTA_MODES,
    ModelSpec,
    build_model,
    cached_checkpoint,
    for_inference,
    load_checkpoint,
    load_torchscript,
    save_checkpoint,
)
from cachenet.toolchain.seeds import key_parts, training_seed
from cachenet.toolchain.train import TrainConfig, accuracy, fit, predict_logits

log = logging.getLogger(__name__)


@dataclass
class FullModel:
    model: nn.Module
    spec: ModelSpec | None  # None for a TorchScript model
    source: str  # "trained", "cached", "user-state-dict" or "torchscript"
    meta: dict


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with a ``code/`` folder; checkpoints have none."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name for name in zf.namelist())


def data_fingerprint(splits: Splits) -> str:
    h = hashlib.sha256()
    for arr in (splits.train.x, splits.train.y):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(json.dumps(splits.classes).encode())
    return h.hexdigest()[:16]


def arch_spec(arch: str, splits: Splits) -> ModelSpec:
    """The spec of a registered architecture for ``splits``' input and classes."""
    c, h, _ = splits.input_shape
    return ModelSpec(arch, {"in_channels": c, "num_classes": len(splits.classes),
                            "mean": list(splits.normalization.mean),
                            "std": list(splits.normalization.std), "image_size": h})


def default_full_config(splits: Splits) -> TrainConfig:
    c, h, _ = splits.input_shape
    if h >= 16:
        # CIFAR-size: 40 epochs (~112 s each for ResNet-20 on 2 quiet cores: 75
        # minutes) or 90 minutes, whichever ends first. On a busy machine the
        # budget binds and costs accuracy (26 epochs gave 86.2%); give it more
        # with --time-budget.
        return TrainConfig(epochs=40, batch_size=128, lr=0.1, weight_decay=5e-4,
                           augment="crop-flip" if c == 3 else "crop", channels_last=True,
                           time_budget_s=5400.0)
    return TrainConfig(epochs=30, batch_size=64, lr=0.05, weight_decay=5e-4, augment="crop")


def resolve_tta(tta: str, cfg: TrainConfig | None) -> str:
    """``auto``: ``flip`` for a model trained here with horizontal flips, else ``none``."""
    if tta == "auto":
        return "flip" if cfg is not None and cfg.augment == "crop-flip" else "none"
    if tta not in TTA_MODES:
        raise ConfigError(f"test-time augmentation must be auto or one of {', '.join(TTA_MODES)}, "
                          f"not '{tta}'")
    return tta


def with_tta(fm: FullModel, tta: str) -> FullModel:
    """``fm`` serving with test-time augmentation ``tta`` (``none`` or ``flip``)."""
    if fm.spec is None or not hasattr(fm.model, "tta"):
        if tta == "none":
            return fm
        what = fm.spec.arch if fm.spec is not None else "a TorchScript model"
        raise ConfigError(f"test-time augmentation '{tta}' needs a registered ResNet full model, "
                          f"not {what}; a model of your own can average its views in forward()")
    fm.model.tta = tta
    kwargs = {k: v for k, v in fm.spec.kwargs.items() if k != "tta"}
    if tta != "none":
        kwargs["tta"] = tta
    return FullModel(fm.model, ModelSpec(fm.spec.arch, kwargs), fm.source, {**fm.meta, "tta": tta})


def obtain_full_model(splits: Splits, *, full: str = "resnet20", weights: Path | None = None,
                      full_kwargs: dict | None = None, cfg: TrainConfig | None = None,
                      cache_dir: Path, progress: bool = True, tta: str = "auto",
                      reference_dir: Path | None = None) -> FullModel:
    """Return the full model named by ``full`` (and ``weights``), training it if needed.

    ``full`` is a registered architecture, ``package.module:factory`` (built
    with ``full_kwargs``), or a path to a TorchScript file or a cachenet
    checkpoint (a bundle's ``full/model.pt``) when ``weights`` is None.
    ``tta`` (``auto``, ``none`` or ``flip``) sets test-time augmentation; ``auto``
    keeps what a checkpoint records and flips for a model trained here with flips.
    A registered model already trained is taken from ``cache_dir``, else from
    ``reference_dir``.
    """
    if full in ARCHITECTURES and weights is None:
        cfg = cfg or default_full_config(splits)
        fm = with_tta(_registered_full_model(splits, full, cfg, cache_dir, progress,
                                             reference_dir), resolve_tta(tta, cfg))
    else:
        fm = _user_full_model(splits, full, weights, full_kwargs)
        fm = fm if tta == "auto" else with_tta(fm, resolve_tta(tta, None))
    for_inference(fm.model)  # from here on it only answers: as teacher, labeller, judge
    return fm


def _user_full_model(splits: Splits, full: str, weights: Path | None,
                     full_kwargs: dict | None) -> FullModel:
    path = Path(full)
    if weights is None and path.suffix in {".pt", ".ts", ".pth", ".jit"} and path.exists():
        if _is_torchscript(path):
            return FullModel(load_torchscript(path), None, "torchscript", {"path": str(path)})
        model, spec, meta = load_checkpoint(path)
        return FullModel(model, spec, "user-checkpoint", {"path": str(path), **meta})
    if weights is not None:
        # A registered architecture fits the data; a user's factory gets its kwargs,
        # and a cachenet checkpoint's own spec wins over both when it has one.
        spec = (arch_spec(full, splits) if full in ARCHITECTURES
                else ModelSpec(full, dict(full_kwargs or {})))
        model, spec, meta = load_checkpoint(weights, spec, prefer_stored=full_kwargs is None)
        return FullModel(model, spec, "user-state-dict", {"weights": str(weights), **meta})
    raise ConfigError(f"full model '{full}' is not a registered architecture "
                      f"({', '.join(sorted(ARCHITECTURES))}); a user model needs weights "
                      "(a state dict) or must be a TorchScript file")


def _registered_full_model(splits: Splits, full: str, cfg: TrainConfig, cache_dir: Path,
                           progress: bool, reference_dir: Path | None) -> FullModel:
    """A registered architecture trained on ``splits`` once, then taken from the cache."""
    spec = arch_spec(full, splits)
    key = hashlib.sha256(json.dumps([spec.to_dict(), cfg.to_dict(), data_fingerprint(splits),
                                     *key_parts()], sort_keys=True).encode()).hexdigest()[:16]
    ckpt = cache_dir / "models" / f"full-{full}-{splits.name}-{key}.pt"
    found = cached_checkpoint(cache_dir, ckpt.name, reference_dir)
    if found is not None:
        model, spec, meta = load_checkpoint(found)
        log.info("reusing the trained full model %s", found)
        return FullModel(model, spec, "cached", {**meta, "checkpoint": str(found)})
    torch.manual_seed(training_seed(cfg.seed))
    model = build_model(spec)
    log.info("training full model %s on %d examples (%s)", full, len(splits.train), cfg)
    history = fit(model, splits.train, cfg, checkpoint=ckpt.with_name(ckpt.name + ".partial"),
                  progress=progress)
    meta = {"train": history, "config": cfg.to_dict(),
            "test_accuracy": accuracy(predict_logits(model, splits.test.x), splits.test.y)}
    save_checkpoint(ckpt, model, spec, meta)
    ckpt.with_name(ckpt.name + ".partial").unlink(missing_ok=True)
    log.info("full model test accuracy %.4f after %s s", meta["test_accuracy"],
             history["elapsed_s"])
    return FullModel(model, spec, "trained", {**meta, "checkpoint": str(ckpt)})
