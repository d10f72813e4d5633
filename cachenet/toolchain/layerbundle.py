"""``cachenet layercache``: add layer caches to a built bundle, for the cloud, the edge, or both.

The cloud's go under ``full_model.layer_cache`` (rule files only: the cloud
cuts its torch model itself); the edge's at the top level, with the cache model
cut into ONNX segments (checked to chain to the model's logits within 1e-4).
Both are fitted and calibrated on the bundle's own data splits (give the same
``dataset`` as ``cachenet build``; the seed and any test images moved into calibration
come from the manifest) against the full model's answers.
The result is a new bundle at ``out``, hashed and verified like every bundle.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cachenet.core.bundle import repack, verify_bundle
from cachenet.core.cascade import Stage
from cachenet.exceptions import ConfigError
from cachenet.toolchain.layerfit import LayerCacheConfig, fit_cascade, write_section
from cachenet.toolchain.models import ModelSpec, for_inference, load_checkpoint
from cachenet.toolchain.sites import export_segments, staged
from cachenet.toolchain.train import predict_logits

log = logging.getLogger(__name__)

WHERE = ("cloud", "edge")


def full_model_of(bundle: Path, device: str = "cpu"):
    """The bundle's full model as the cloud serves it (batch norms folded)."""
    m = verify_bundle(bundle)
    info = m.data.get("full_model") or {}
    if info.get("format") == "torchscript" or not info.get("files"):
        raise ConfigError("layer caches need the bundle's full model as a cachenet checkpoint")
    spec = ModelSpec.from_dict(info["spec"]) if info.get("spec") else None
    model, _, _ = load_checkpoint(bundle / info["files"][0], spec)
    return for_inference(model, device, fold=True), m


def add_layer_caches(bundle: Path, out: Path, *, dataset: str, seed: int | None = None,
                     where: tuple[str, ...] = WHERE, cfg: LayerCacheConfig | None = None,
                     cache_dir: Path | None = None) -> dict[str, Any]:
    """Write ``bundle`` with layer caches to ``out``; returns what was fitted."""
    from cachenet.toolchain.data import load_bundle_splits

    cfg = cfg or LayerCacheConfig()
    if not where or set(where) - set(WHERE):
        raise ConfigError(f"layer caches go to {WHERE}, not {where}")
    full, m = full_model_of(bundle)
    splits = load_bundle_splits(dataset, m.data["dataset"], cache_dir=cache_dir, seed=seed)
    shape = splits.input_shape
    def teacher(x: np.ndarray) -> np.ndarray:
        return predict_logits(full, x)
    fields: dict[str, Any] = {}
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cachenet-layers-") as tmp:
        work, extra = Path(tmp), {}
        if "cloud" in where:
            fitted = fit_cascade(staged(full, cfg.grid), shape, splits.train.x,
                                 splits.calib.x, None, cfg)
            section, files = write_section(fitted, work, "full", cfg)
            extra.update(files)
            fields["full_model"] = {**m.data["full_model"], "layer_cache": section}
            report["cloud"] = fitted.calibration
        if "edge" in where:
            ckpt = (m.data.get("full_model") or {}).get("cache_checkpoint")
            if not ckpt:
                raise ConfigError("the bundle carries no torch cache model to cut into segments")
            cache_model, _, _ = load_checkpoint(bundle / ckpt)
            cut = staged(cache_model.eval(), cfg.grid)
            paths = export_segments(cut, shape, work / "segments", m.input["name"],
                                    np.ascontiguousarray(splits.test.x[:64]))
            names = [f"layers/segment-{i}.onnx" for i in range(len(paths))]
            extra.update(dict(zip(names, paths, strict=True)))
            stage = Stage.from_manifest(m.gate, m.partition)

            def escalates(logits: np.ndarray) -> np.ndarray:
                return stage.read(logits)[1] < stage.gate.threshold

            fitted = fit_cascade(cut, shape, splits.train.x, splits.calib.x, teacher, cfg,
                                 escalates)
            section, files = write_section(fitted, work, "edge", cfg, names)
            extra.update(files)
            fields["layer_cache"] = section
            report["edge"] = fitted.calibration
        manifest = repack(bundle, out, extra, fields=fields)
    report["version"] = manifest.version
    return report
