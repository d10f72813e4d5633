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
             work: Path, name: str, rows: np.ndarray | None = None,
             ) -> tuple[dict, dict[str, Path]]:
    """An akey rule at ``site`` whose projection fits ``feats`` and whose table holds
    ``labels`` for ``rows`` (the first ``len(labels)`` rows unless given); a hit after one
    answer (threshold 0.5)."""
    cache = fit_keys(feats, num_classes)
    rows = np.arange(len(labels)) if rows is None else rows[:len(labels)]
    cache.fill(feats[rows], labels)
    path = work / f"{name}.npz"
    np.savez(path, **cache.arrays())
    rule = {"site": site, "kind": "akey", "threshold": 0.5, "config": asdict(cache.config),
            "file": f"layers/{name}.npz"}
    return rule, {f"layers/{name}.npz": path}


def fit_keys(feats: np.ndarray, num_classes: int) -> KeyCache:
    return KeyCache.fit(KeyConfig(num_classes, dim=8, step=0.05), feats)


def distinct_rows(fit_on: np.ndarray, feats: np.ndarray, num_classes: int,
                  n: int) -> np.ndarray:
    """``n`` rows of ``feats`` that fall in ``n`` different cells of the table that
    :func:`key_rule` fits on ``fit_on``: which inputs share a cell depends on how the
    model trained, so a test that needs each input to be its own first sighting picks
    its inputs with this."""
    codes = fit_keys(fit_on, num_classes).codes(feats)
    rows: list[int] = []
    seen: set[bytes] = set()
    for i, code in enumerate(codes):
        if code.tobytes() not in seen:
            seen.add(code.tobytes())
            rows.append(i)
        if len(rows) == n:
            return np.asarray(rows)
    raise AssertionError(f"only {len(rows)} distinct cells among {len(feats)} rows")


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
