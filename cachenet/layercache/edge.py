"""The edge's layer caches: its cache model's segments and rules, loaded from a bundle.

A bundle whose manifest has a top-level ``layer_cache`` section (written by
``cachenet layercache``) is served through it: the segments are opened and
replayed on the bundle's canary inputs, every rule is read and tried on
features of its site's width, and anything that does not fit refuses the whole
bundle (so the model already serving keeps serving). Tables start with what
the bundle ships and fill online with the cloud's answers to escalations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cachenet.core.manifest import Manifest
from cachenet.exceptions import IntegrityError, ManifestError
from cachenet.layercache.cascade import LayerCascade
from cachenet.layercache.segments import SegmentRunner, load_segments
from cachenet.layercache.spec import load_cascade, parse_spec


@dataclass
class EdgeLayers:
    cascade: LayerCascade
    runner: SegmentRunner


def _canary(manifest: Manifest) -> tuple[np.ndarray | None, np.ndarray | None]:
    canary = manifest.data.get("canary")
    if not canary:
        return None, None
    try:
        with np.load(manifest.root / canary["file"], allow_pickle=False) as f:
            return f["x"], f["logits"]
    except Exception as exc:  # zipfile, numpy and pickle refusals alike
        raise IntegrityError(f"canary file '{canary['file']}' cannot be read: {exc}") from exc


def load_edge_layers(manifest: Manifest, threads: int | None = None) -> EdgeLayers | None:
    """The layer caches of a verified bundle, or None when it carries none."""
    section = manifest.data.get("layer_cache")
    if not section:
        return None
    spec = parse_spec(section, manifest)
    if not spec.has_segments:
        raise ManifestError("layer_cache on the edge needs a segment for every stage")
    x, logits = _canary(manifest)
    runner = load_segments(manifest.root, spec.segments, x, logits, threads)  # type: ignore[arg-type]
    cascade = load_cascade(spec, manifest.root, len(manifest.classes))
    widths = [int(s["features"]) for s in spec.data["sites"]]
    state = np.zeros((1, *[int(d) for d in manifest.input["shape"][1:]]), np.float32)
    for i, width in enumerate(widths):
        state = runner.stage(i, state)
        if runner.features(state).shape != (1, width):
            raise IntegrityError(f"segment {i} answers features of shape "
                                 f"{runner.features(state).shape}; the manifest says {width}")
    return EdgeLayers(cascade, runner)
