"""Load the full model that ``cachenet build`` saved beside a cache bundle."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cachenet.core.bundle import verify_bundle
from cachenet.core.manifest import Manifest
from cachenet.exceptions import ManifestError
from cachenet.toolchain.models import ModelSpec, for_inference, load_checkpoint, load_torchscript

log = logging.getLogger(__name__)


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when available, else CPU; logs the choice."""
    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    log.info("full model runs on %s%s", device,
             f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    return device


def load_full_model(bundle: Path, *, device: str | None = None) -> tuple[nn.Module, Manifest]:
    """Verify ``bundle`` and load its full model, in eval mode, on ``device``, laid out
    for fast inference (:func:`cachenet.toolchain.models.for_inference`), batch norms folded into
    the convolutions where the model can (our ResNets)."""
    manifest = verify_bundle(Path(bundle))
    info = manifest.data.get("full_model")
    if not info or not info.get("files"):
        raise ManifestError(f"bundle {bundle} carries no full model")
    path = Path(bundle) / info["files"][0]
    if info.get("format") == "torchscript":
        model = load_torchscript(path)
    else:
        spec = ModelSpec.from_dict(info["spec"]) if info.get("spec") else None
        model, _, _ = load_checkpoint(path, spec)
    log.info("full model %s, test-time augmentation: %s", path, info.get("tta", "none"))
    return for_inference(model, pick_device(device), fold=True), manifest


def torch_runner(model: nn.Module, device: torch.device):
    """``run_batch`` for the batcher: numpy in, numpy logits out, no autograd."""
    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        if not x.flags.writeable:  # a view of the request's bytes; torch wants its own
            x = x.copy()
        out = model(torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True))
        return out.float().cpu().numpy()
    return run
