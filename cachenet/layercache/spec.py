"""The bundle's ``layer_cache`` section: checked, then turned into a :class:`LayerCascade`.

The edge's cache model carries it at the top level of the manifest, with its
ONNX segments; the cloud's full model under ``full_model``, without segments
(the cloud cuts its torch model itself)::

    layer_cache
      sites       [{name: str, macs: int >= 0 (to the end of its stage),
                    features: int >= 1, grid: 1-16 (features: the activation
                    average-pooled to grid x grid; default 2),
                    segment: bundle path | null}, ...] (1-64)
      final       {segment: bundle path | null}   the last stage, to the logits
      full_macs   int >= 1
      rules       [{site: a site's name, kind: a registered kind, threshold: number,
                    config: {...}, file: bundle path (.npz)}, ...]   in cascade order
      refresh     {rate: [0, 1]}                                      (optional)
      fill_confidence  [0, 1]: tables learn only answers at least this sure (optional)
      target, delta                                                   the calibration's
      calibration {...}                                               figures, not read

Every file named must be listed in the manifest's ``files`` (and so is hashed
and verified with the bundle). Rule files are read without pickle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cachenet.core.manifest import Manifest, safe_relpath
from cachenet.exceptions import CachenetError, IntegrityError, ManifestError
from cachenet.layercache.cascade import LayerCascade, Rule
from cachenet.layercache.control import Refresh
from cachenet.layercache.kinds import KINDS

MAX_SITES = 64
MAX_RULES = 256


@dataclass
class LayerCacheSpec:
    data: dict[str, Any]
    site_names: list[str]
    segments: list[str | None]  # per stage: sites', then the final one

    @property
    def grid(self) -> int:
        """The feature grid (one for every site)."""
        return int(self.data["sites"][0].get("grid", 2))

    @property
    def has_segments(self) -> bool:
        return all(s is not None for s in self.segments)


def _int(v: object, where: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ManifestError(f"layer_cache.{where} must be an integer >= {lo}, not {v!r:.40}")
    return v


def _listed(name: object, files: dict[str, Any], where: str) -> str | None:
    if name is None:
        return None
    rel = str(safe_relpath(name))
    if rel not in files:
        raise ManifestError(f"layer_cache.{where} names '{rel}', which the manifest's files "
                            "do not list")
    return rel


def parse_spec(section: object, manifest: Manifest) -> LayerCacheSpec:
    """Check a ``layer_cache`` section against the schema above; ManifestError names the
    field that is wrong."""
    if not isinstance(section, dict):
        raise ManifestError("layer_cache must be an object")
    files = manifest.files
    sites = section.get("sites")
    if not isinstance(sites, list) or not 1 <= len(sites) <= MAX_SITES:
        raise ManifestError(f"layer_cache.sites must be a list of 1 to {MAX_SITES} sites")
    names: list[str] = []
    segments: list[str | None] = []
    for i, site in enumerate(sites):
        if not isinstance(site, dict) or not isinstance(site.get("name"), str) \
                or not site["name"] or site["name"] in names:
            raise ManifestError(f"layer_cache.sites[{i}] needs a unique non-empty name")
        names.append(site["name"])
        _int(site.get("macs"), f"sites[{i}].macs")
        _int(site.get("features"), f"sites[{i}].features", 1)
        if _int(site.get("grid", 2), f"sites[{i}].grid", 1) > 16:
            raise ManifestError(f"layer_cache.sites[{i}].grid must be at most 16")
        segments.append(_listed(site.get("segment"), files, f"sites[{i}].segment"))
    final = section.get("final") or {}
    if not isinstance(final, dict):
        raise ManifestError("layer_cache.final must be an object")
    segments.append(_listed(final.get("segment"), files, "final.segment"))
    _int(section.get("full_macs"), "full_macs", 1)
    rules = section.get("rules")
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise ManifestError(f"layer_cache.rules must be a list of at most {MAX_RULES} rules")
    for i, rule in enumerate(rules):
        where = f"rules[{i}]"
        if not isinstance(rule, dict) or rule.get("site") not in names:
            raise ManifestError(f"layer_cache.{where}.site must name one of the sites {names}")
        if rule.get("kind") not in KINDS:
            raise ManifestError(f"layer_cache.{where}.kind {rule.get('kind')!r:.40} is not one "
                                f"of {sorted(KINDS)}")
        t = rule.get("threshold")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ManifestError(f"layer_cache.{where}.threshold must be a finite number")
        if not isinstance(rule.get("config"), dict):
            raise ManifestError(f"layer_cache.{where}.config must be an object")
        _listed(rule.get("file"), files, f"{where}.file")
    fill = section.get("fill_confidence", 0.0)
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not 0 <= fill <= 1:
        raise ManifestError("layer_cache.fill_confidence must be a number in [0, 1]")
    refresh = section.get("refresh") or {}
    rate = refresh.get("rate", 0.0) if isinstance(refresh, dict) else None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ManifestError("layer_cache.refresh.rate must be a number in [0, 1]")
    return LayerCacheSpec(section, names, segments)


def _rule(root: Path, entry: dict[str, Any], site: int, refresh: Refresh | None,
          num_classes: int) -> Rule:
    cls = KINDS[entry["kind"]]
    try:
        config = cls.Config(**entry["config"])
    except TypeError as exc:
        raise ManifestError(f"layer_cache rule {entry['site']}:{entry['kind']} has a config "
                            f"that does not fit: {exc}") from None
    try:
        with np.load(root / entry["file"], allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zipfile, numpy and pickle refusals alike
        raise IntegrityError(f"layer cache file '{entry['file']}' is not a readable .npz of "
                             f"arrays: {type(exc).__name__}: {str(exc)[:200]}") from exc
    cache = cls.from_arrays(config, arrays)
    if cache.answers() > num_classes:
        raise ManifestError(f"layer cache {entry['site']}:{entry['kind']} answers "
                            f"{cache.answers()} classes; the bundle has {num_classes}")
    return Rule(site, f"{entry['site']}:{entry['kind']}", cache, float(entry["threshold"]),
                refresh)


def load_cascade(spec: LayerCacheSpec, root: Path, num_classes: int, *,
                 refresh_rate: float | None = None) -> LayerCascade:
    """The cascade a verified bundle at ``root`` describes; ``refresh_rate`` overrides the
    bundle's. Each rule gets its own auto-refresh counters."""
    d = spec.data
    rate = float((d.get("refresh") or {}).get("rate", 0.0)) if refresh_rate is None \
        else refresh_rate
    target, delta = float(d.get("target", 0.99)), float(d.get("delta", 0.05))
    rules = []
    for entry in d["rules"]:
        refresh = Refresh(rate, target, alpha=delta) if rate > 0 else None
        try:
            rules.append(_rule(root, entry, spec.site_names.index(entry["site"]), refresh,
                               num_classes))
        except CachenetError:
            raise
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"layer cache rule {entry['site']}:{entry['kind']}: "
                                f"{exc}") from exc
    widths = [int(s["features"]) for s in d["sites"]]
    for rule in rules:  # each takes its site's features, or the bundle is refused now
        try:
            rule.cache.lookup(np.zeros((1, widths[rule.site]), np.float32))
        except (ValueError, IndexError) as exc:
            raise ManifestError(f"layer cache {rule.name} does not take its site's "
                                f"{widths[rule.site]} features: {exc}") from exc
    return LayerCascade(spec.site_names, [int(s["macs"]) for s in d["sites"]],
                        int(d["full_macs"]), rules, num_classes,
                        float(d.get("fill_confidence", 0.0)))
