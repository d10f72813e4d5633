"""The manifest's schema: every field that something trusts is checked, by name."""

from __future__ import annotations

import copy
import json

import pytest

from cachenet.core.manifest import VERSION_PATTERN, check_version, parse_manifest, validate
from cachenet.core.runtime import load_cache_model
from cachenet.exceptions import IntegrityError, ManifestError


@pytest.fixture(scope="module")
def good(digits_bundle) -> dict:
    return json.loads((digits_bundle[0] / "manifest.json").read_text())


def edited(manifest: dict, edit) -> dict:
    data = copy.deepcopy(manifest)
    edit(data)
    return data


BAD = {
    "classes an int": (lambda d: d.update(classes=10), "'classes' must be a non-empty list"),
    "classes of ints": (lambda d: d.update(classes=list(range(10))), "'classes'"),
    "classes too few": (lambda d: d.update(classes=d["classes"][:9]), "answers 9"),
    "shape an int": (lambda d: d["input"].update(shape=64), "'input.shape'"),
    "shape null": (lambda d: d["input"].update(shape=None), "'input.shape'"),
    "shape of strings": (lambda d: d["input"].update(shape=[-1, "a", 8, 8]), "'input.shape'"),
    "shape of bools": (lambda d: d["input"].update(shape=[-1, True, 8, 8]), "'input.shape'"),
    "huge dtype": (lambda d: d["input"].update(dtype="f" * (1 << 20)), "'input.dtype'"),
    "gate a list": (lambda d: d.update(gate=[0.5]), "'gate' must be an object"),
    "gate threshold text": (lambda d: d["gate"].update(threshold="high"), "'gate.threshold'"),
    "gate threshold NaN": (lambda d: d["gate"].update(threshold=float("nan")),
                           "'gate.threshold'"),
    "gate score unknown": (lambda d: d["gate"].update(score="vibes"), "'gate.score'"),
    "variant gate": (lambda d: d["variant_gates"].update(int8={"score": 1}),
                     "'variant_gates.int8.score'"),
    "model a string": (lambda d: d.update(model="model.onnx"), "'model' must be an object"),
    "model file a list": (lambda d: d["model"].update(file=["a"]), "'model.file'"),
    "version dots": (lambda d: d.update(version=".."), "is not a bundle version"),
    "version a path": (lambda d: d.update(version="../../victim"), "is not a bundle version"),
    "version an int": (lambda d: d.update(version=5), "is not a bundle version"),
    "sha256 short": (lambda d: d["files"]["model.onnx"].update(sha256="abc"),
                     "sha256 must be 64"),
    "bytes negative": (lambda d: d["files"]["model.onnx"].update(bytes=-1), "bytes must be"),
    "file and folder": (lambda d: d["files"].update({"model.onnx/x": {"sha256": "0" * 64}}),
                        "a folder of it"),
    "partition classes": (lambda d: d.update(partition={"classes": [99], "other_index": 1}),
                          "'partition.classes'"),
    "partition other": (lambda d: d.update(partition={"classes": [1, 2], "other_index": 0}),
                        "'partition.other_index'"),
    "canary a list": (lambda d: d.update(canary=["canary.npz"]), "'canary' must be an object"),
    "format true": (lambda d: d.update(format=True), "format"),
    "variants null": (lambda d: d.update(variants=None), "'variants' must be an object"),
    "variant gates null": (lambda d: d.update(variant_gates=None), "'variant_gates'"),
    "threshold huge": (lambda d: d["gate"].update(threshold=10**400), "'gate.threshold'"),
    "canary n negative": (lambda d: d["canary"].update(n=-1), "'canary.n'"),
    "name empty": (lambda d: d.update(name=""), "'name'"),
    # sections an agent reads at load: refused when stored, not when the agent meets them
    "label shift a list": (lambda d: d.update(label_shift=[1]), "label_shift must be an object"),
    "label shift window text": (lambda d: d["label_shift"].update(window="x"),
                                "label_shift.window"),
    "normalization text": (lambda d: d["input"].update(normalization="x"),
                           "'input.normalization'"),
    "scale negative": (lambda d: d["input"]["normalization"].update(scale=-1),
                       "'input.normalization'"),
    # no NaN or infinity in any field, read or not: strict JSON has neither
    "calibration agreement NaN": (
        lambda d: d["label_shift"]["calibration"].update(agreement=float("nan")),
        r"'label_shift.calibration.agreement' is nan; a manifest holds finite numbers only"),
    "metric infinite": (lambda d: d["metrics"].update(cache_accuracy=float("inf")),
                        "'metrics.cache_accuracy' is inf"),
    "prior -infinity": (lambda d: d["label_shift"]["prior"].__setitem__(3, float("-inf")),
                        r"'label_shift.prior\[3\]' is -inf"),
    "unknown field NaN": (lambda d: d.update(notes={"x": [1.0, float("nan")]}),
                          r"'notes.x\[1\]' is nan"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_wrong_field_is_named(good, case):
    edit, match = BAD[case]
    with pytest.raises(ManifestError, match=match) as err:
        validate(edited(good, edit))
    assert len(str(err.value)) < 400  # what is wrong, not the hostile value echoed back


def test_the_good_manifest_passes_and_the_built_output_width_is_checked(good):
    assert validate(copy.deepcopy(good))["version"] == good["version"]
    with pytest.raises(ManifestError, match="says 7 outputs"):
        validate(edited(good, lambda d: d["output"].update(shape=[-1, 7])))


@pytest.mark.parametrize("raw,match", [
    (b'{"format": 1, "gate": {"threshold": NaN}}', "'gate.threshold' is nan"),
    (b'{"format": 1, "x": [Infinity]}', r"'x\[0\]' is inf"),
    (b"[" * 100_000, "not readable JSON"),
    (b"\xff\xfe", "not readable JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b" " * (5 << 20), "over the limit"),
])
def test_bytes_that_are_not_a_manifest(raw, match):
    with pytest.raises(ManifestError, match=match):
        parse_manifest(raw, "pushed manifest")


def test_versions():
    for ok in ("67e2ec41ee51", "v1.2-rc_3", "A"):
        assert check_version(ok) == ok and VERSION_PATTERN.fullmatch(ok)
    for bad in (".", "..", "../x", "a/b", "", ".hidden", "-x", "a b", None):
        with pytest.raises(ManifestError):
            check_version(bad)


def test_a_manifest_that_disagrees_with_its_model_is_refused_at_load(bundle_copy):
    """A consistent manifest (classes and output both 9) whose model gives 10 logits."""
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["classes"] = data["classes"][:9]
    data["output"]["shape"] = [-1, 9]
    if "label_shift" in data:  # its prior is one number a class
        data["label_shift"]["prior"] = data["label_shift"]["prior"][:9]
    path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match=r"shape \(1, 10\); the manifest needs \(1, 9\)"):
        load_cache_model(bundle_copy)
