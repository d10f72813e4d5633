"""The bundle's layer_cache section: every field checked, bad files refused by name."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cachenet.core.manifest import Manifest
from cachenet.exceptions import IntegrityError, ManifestError
from cachenet.layercache import KeyCache, KeyConfig, load_cascade, parse_spec


@pytest.fixture
def bundle(tmp_path):
    feats = np.random.default_rng(0).standard_normal((50, 12)).astype(np.float32)
    cache = KeyCache.fit(KeyConfig(num_classes=3, dim=4), feats)
    cache.fill(feats[:5], np.array([0, 1, 2, 0, 1]))
    (tmp_path / "layers").mkdir()
    np.savez(tmp_path / "layers" / "a.npz", **cache.arrays())
    section = {"sites": [{"name": "s1", "macs": 10, "features": 12, "grid": 2,
                          "segment": None}],
               "final": {"segment": None}, "full_macs": 100,
               "rules": [{"site": "s1", "kind": "akey", "threshold": 0.5,
                          "config": {"num_classes": 3, "dim": 4}, "file": "layers/a.npz"}],
               "refresh": {"rate": 0.1}, "target": 0.99, "delta": 0.05}
    manifest = Manifest({"files": {"layers/a.npz": {}}, "classes": ["a", "b", "c"]}, tmp_path)
    return section, manifest, feats


def test_a_good_section_loads_into_a_cascade(bundle):
    section, manifest, feats = bundle
    cascade = load_cascade(parse_spec(section, manifest), manifest.root, 3)
    assert [r.name for r in cascade.rules] == ["s1:akey"]
    assert cascade.rules[0].refresh.rate == 0.1
    assert cascade.rules[0].cache.lookup(feats[:3]).labels.tolist() == [0, 1, 2]


BAD = {
    "no sites": (lambda s: s.update(sites=[]), "sites"),
    "duplicate site": (lambda s: s["sites"].append(dict(s["sites"][0])), "unique"),
    "negative macs": (lambda s: s["sites"][0].update(macs=-1), "macs"),
    "huge grid": (lambda s: s["sites"][0].update(grid=99), "grid"),
    "unknown kind": (lambda s: s["rules"][0].update(kind="magic"), "kind"),
    "unknown site": (lambda s: s["rules"][0].update(site="s9"), "site"),
    "nan threshold": (lambda s: s["rules"][0].update(threshold=float("nan")), "threshold"),
    "file not listed": (lambda s: s["rules"][0].update(file="layers/b.npz"), "do not list"),
    "path escape": (lambda s: s["rules"][0].update(file="../x.npz"), "outside"),
    "refresh rate": (lambda s: s.update(refresh={"rate": 3}), "refresh"),
    "too many rules": (lambda s: s.update(rules=s["rules"] * 300), "at most"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sections_are_refused_naming_the_field(bundle, case):
    section, manifest, _ = bundle
    bad = copy.deepcopy(section)
    change, words = BAD[case]
    change(bad)
    with pytest.raises(ManifestError, match=words):
        parse_spec(bad, manifest)


def test_a_bad_config_or_file_is_refused_when_loading(bundle):
    section, manifest, _ = bundle
    bad = copy.deepcopy(section)
    bad["rules"][0]["config"] = {"num_classes": 3, "dim": 4, "nonsense": 1}
    with pytest.raises(ManifestError, match="config"):
        load_cascade(parse_spec(bad, manifest), manifest.root, 3)
    narrow = copy.deepcopy(section)
    narrow["sites"][0]["features"] = 10  # the rule's projection takes 12
    with pytest.raises(ManifestError, match="does not take its site's 10 features"):
        load_cascade(parse_spec(narrow, manifest), manifest.root, 3)
    with pytest.raises(ManifestError, match="answers 3 classes"):
        load_cascade(parse_spec(section, manifest), manifest.root, 2)
    (manifest.root / "layers" / "a.npz").write_bytes(b"not a zip")
    with pytest.raises(IntegrityError, match="not a readable"):
        load_cascade(parse_spec(section, manifest), manifest.root, 3)
