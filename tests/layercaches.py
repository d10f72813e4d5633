"""Bundles whose layer caches a test controls: one approximate-key rule, its table and
threshold chosen by the test, so that what hits is known by construction."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cachenet.core.bundle import repack, verify_bundle
from cachenet.layercache import KeyCache, KeyConfig


def key_rule(feats: np.ndarray, labels: np.ndarray, num_classes: int, *, site: str,
             work: Path, name: str) -> tuple[dict, dict[str, Path]]:
    """An akey rule at ``site`` whose projection fits ``feats`` and whose table holds
    ``labels`` for the first ``len(labels)`` rows; a hit after one answer (threshold 0.5)."""
    cache = KeyCache.fit(KeyConfig(num_classes, dim=8, step=0.05), feats)
    cache.fill(feats[:len(labels)], labels)
    path = work / f"{name}.npz"
    np.savez(path, **cache.arrays())
    rule = {"site": site, "kind": "akey", "threshold": 0.5, "config": asdict(cache.config),
            "file": f"layers/{name}.npz"}
    return rule, {f"layers/{name}.npz": path}


def rewrite(bundle: Path, out: Path, *, cloud_rules: list | None = None,
            edge_rules: list | None = None, files: dict[str, Path] | None = None,
            gate_threshold: float | None = None, refresh: float = 0.0,
            fill_confidence: float = 0.0) -> Path:
    m = verify_bundle(bundle)
    data = json.loads(json.dumps(m.data))
    fields: dict = {}
    if cloud_rules is not None:
        section = data["full_model"]["layer_cache"]
        section.update(rules=cloud_rules, refresh={"rate": refresh},
                       fill_confidence=fill_confidence)
        fields["full_model"] = data["full_model"]
    if edge_rules is not None:
        data["layer_cache"].update(rules=edge_rules, refresh={"rate": refresh},
                                   fill_confidence=fill_confidence)
        fields["layer_cache"] = data["layer_cache"]
    if gate_threshold is not None:
        fields["gate"] = {**data["gate"], "threshold": gate_threshold}
    repack(bundle, out, files, fields=fields)
    return out
