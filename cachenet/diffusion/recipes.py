"""The steps from a data set to a served diffusion model, shared by the CLI and
``bench/diffusion.py``: train a denoiser, train an L2C router for it."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from cachenet.diffusion.nets import DiffusionModel, build, load_checkpoint, save_checkpoint
from cachenet.diffusion.stepcache.l2c import RouterConfig, train_router
from cachenet.diffusion.train import DiffusionTrainConfig, train_denoiser
from cachenet.exceptions import DatasetError, ModelError
from cachenet.toolchain.seeds import key_parts

log = logging.getLogger(__name__)


def training_images(spec: str, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                         list[str]]:
    """Every training image of a data set (uint8 where stored so), labels and classes.

    A generative model learns from the whole training folder: the classifier's
    calibration split is not held out here."""
    if spec == "digits":
        from cachenet.toolchain.data import load_splits

        s = load_splits("digits")
        return (np.concatenate([s.train.x, s.calib.x]), np.concatenate([s.train.y, s.calib.y]),
                s.train.classes)
    from cachenet.toolchain.data import default_cache_dir
    from cachenet.toolchain.data.imagefolder import load_imagefolder_arrays

    path = Path(spec)
    if not (path.is_dir() or path.suffix == ".zip"):
        raise DatasetError(f"dataset '{spec}': expected 'digits', a .zip or an image folder")
    arrays = load_imagefolder_arrays(path, cache_dir=cache_dir or default_cache_dir())
    return arrays["x"], arrays["y"], [str(c) for c in arrays["classes"]]


def training_key(arch: str, options: dict, cfg: DiffusionTrainConfig,
                 images: np.ndarray) -> str:
    """What a trained model depends on, hashed: the architecture and its options, the
    training configuration, and the images (their shape and a sample of their bytes)."""
    h = hashlib.sha256(json.dumps({"arch": arch, "options": options, "cfg": cfg.to_dict(),
                                   **({"seeds": key_parts()} if key_parts() else {})},
                                  sort_keys=True).encode())
    h.update(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images[::max(1, len(images) // 256)]).tobytes())
    return h.hexdigest()[:16]


def train_model(arch: str, images: np.ndarray, labels: np.ndarray, classes: list[str], *,
                options: dict, cfg: DiffusionTrainConfig, out: Path,
                progress: bool = True) -> tuple[DiffusionModel, dict]:
    """Train a fresh ``arch`` denoiser on the images and write its checkpoint to ``out``.

    Trained models are cached: when ``out`` already holds the model this exact
    training makes (:func:`training_key`), it is returned as it is. An interrupted
    run resumes from its state file beside ``out`` (removed once the model is written).
    """
    key = training_key(arch, options, cfg, images)
    if out.exists():
        try:
            cached = load_checkpoint(out)
        except ModelError:
            cached = None
        if cached is not None and cached.meta.get("training_key") == key:
            log.info("%s already holds this training's model (%s); not training", out, key)
            return cached, dict(cached.meta.get("training", {}), cached=True)
    c, h = images.shape[1], images.shape[2]
    net = build(arch, in_channels=c, image_size=h, classes=len(classes), **options)
    model = DiffusionModel(net, classes=list(classes))
    state = out.with_name(f"{out.name}.{key}.state")
    history = train_denoiser(model, images, labels, cfg, checkpoint=state, progress=progress)
    model.meta = {"training": {k: v for k, v in history.items() if k != "losses"},
                  "training_key": key, "options": options, "images": len(images)}
    save_checkpoint(out, model)
    state.unlink(missing_ok=True)
    log.info("wrote %s", out)
    return model, history


def add_router(path: Path, cfg: RouterConfig, *, device: str | None = None,
               progress: bool = True) -> dict:
    """Train an L2C router for the DiT at ``path`` and store it in the checkpoint."""
    import torch

    model = load_checkpoint(path)
    dev = torch.device(device) if device else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    model.l2c = train_router(model.to(dev), cfg, progress=progress)
    save_checkpoint(path, model.to("cpu"))
    return model.l2c
