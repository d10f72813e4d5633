"""Loading a bundle verifies it: each way a bundle can be damaged gets a clear error."""

import json

import numpy as np
import onnx
import pytest

from cachenet.core.bundle import sha256_file, verify_bundle
from cachenet.core.manifest import MANIFEST, read_manifest
from cachenet.core.runtime import load_cache_model
from cachenet.exceptions import InputSpecError, IntegrityError, ManifestError


def rewrite_manifest(root, edit):
    data = json.loads((root / MANIFEST).read_text())
    edit(data)
    (root / MANIFEST).write_text(json.dumps(data))


def rehash(root, name):
    def edit(data):
        data["files"][name] = {"sha256": sha256_file(root / name),
                               "bytes": (root / name).stat().st_size}
    rewrite_manifest(root, edit)


def test_manifest_records_what_the_edge_needs(digits_bundle):
    root, report = digits_bundle
    m = verify_bundle(root)
    assert m.input["shape"] == [-1, 1, 8, 8] and m.input["dtype"] == "float32"
    assert m.input["normalization"]["scale"] == 1 / 16
    assert m.classes == [str(i) for i in range(10)]
    assert m.gate["threshold"] == report.threshold and m.gate["score"] == "max_softmax"
    assert {"model.onnx", "canary.npz", "model.int8.onnx", "full/model.pt"} <= set(m.files)
    assert all(len(e["sha256"]) == 64 for e in m.files.values())
    assert "signature" in m.data and m.data["signature"] is None
    assert m.data["gate"]["calibration"]["n"] == report.calibration["n"]


def test_loaded_model_predicts_and_gates(digits_bundle, digits_splits):
    root, report = digits_bundle
    model = load_cache_model(root)
    pred = model.predict(digits_splits.test.x)
    assert pred.labels.shape == (len(digits_splits.test),)
    assert np.mean(pred.local) == pytest.approx(report.hit_rate)
    single = model.predict(digits_splits.test.x[0])  # one C x H x W input
    assert single.labels.shape == (1,)
    int8 = load_cache_model(root, precision="int8")
    assert int8.gate.threshold == report.int8["gate"]["threshold"]
    # Quantisation moves logits a little: a working int8 model gives the fp32 labels on
    # most inputs (a broken one, wrong scales or zero points, agrees at about chance: 0.1).
    assert np.mean(int8.predict(digits_splits.test.x).labels == pred.labels) > 0.5


@pytest.mark.parametrize("x,match", [
    (np.zeros((2, 1, 8, 8), np.float64), "dtype is float64"),
    (np.zeros((2, 3, 8, 8), np.float32), r"shape is \(2, 3, 8, 8\)"),
    (np.zeros((8, 8), np.float32), r"shape is \(8, 8\)"),
    ([[0.0]], "numpy array"),
])
def test_wrong_inputs_are_refused(digits_bundle, x, match):
    model = load_cache_model(digits_bundle[0])
    with pytest.raises(InputSpecError, match=match):
        model.predict(x)


def test_hash_mismatch_names_the_file(bundle_copy):
    path = bundle_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"sha256 of 'model\.onnx'"):
        load_cache_model(bundle_copy)


def test_truncated_file(bundle_copy):
    path = bundle_copy / "model.onnx"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IntegrityError, match=r"'model\.onnx' is 100 bytes"):
        load_cache_model(bundle_copy)


def test_missing_file(bundle_copy):
    (bundle_copy / "canary.npz").unlink()
    with pytest.raises(IntegrityError, match=r"'canary\.npz' listed in the manifest is missing"):
        load_cache_model(bundle_copy)


def test_corrupted_onnx_with_matching_hash(bundle_copy):
    (bundle_copy / "model.onnx").write_bytes(b"\x08\x07garbage that is not a model" * 10)
    rehash(bundle_copy, "model.onnx")
    with pytest.raises(IntegrityError, match="not a loadable ONNX model"):
        load_cache_model(bundle_copy)


def test_valid_onnx_that_computes_something_else_fails_the_canary(bundle_copy):
    path = bundle_copy / "model.onnx"
    m = onnx.load(str(path))
    init = m.graph.initializer[-1]
    arr = onnx.numpy_helper.to_array(init) + 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(m, str(path))
    rehash(bundle_copy, "model.onnx")
    with pytest.raises(IntegrityError, match="canary check failed"):
        load_cache_model(bundle_copy)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("gate"), "lacks the field"),
    (lambda d: d.update(format=99), "format 99"),
    (lambda d: d["files"].update({"../escape": {"sha256": "0" * 64}}), "outside the bundle"),
    (lambda d: d["files"]["model.onnx"].pop("sha256"), "lacks its sha256"),
    (lambda d: d["input"].pop("dtype"), "'input.dtype' must be one of"),
])
def test_bad_manifests(bundle_copy, edit, match):
    rewrite_manifest(bundle_copy, edit)
    with pytest.raises(ManifestError, match=match):
        load_cache_model(bundle_copy)


def test_unreadable_or_absent_manifest(bundle_copy, tmp_path):
    (bundle_copy / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="not readable JSON"):
        read_manifest(bundle_copy)
    (bundle_copy / MANIFEST).unlink()
    with pytest.raises(ManifestError, match="is missing"):
        read_manifest(bundle_copy)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")


def test_unknown_precision(digits_bundle):
    with pytest.raises(ManifestError, match="no 'fp16' model"):
        load_cache_model(digits_bundle[0], precision="fp16")


def test_write_bundle_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path):
    from cachenet.core.bundle import write_bundle
    from cachenet.exceptions import BundleError

    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    src = tmp_path / "m.onnx"
    src.write_bytes(b"x")
    with pytest.raises(BundleError, match="is not a cache bundle"):
        write_bundle(precious, {}, {"model.onnx": src})
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_rebuilding_replaces_a_bundle_atomically(digits_bundle, bundle_copy, tmp_path):
    from cachenet.core.bundle import repack

    m = verify_bundle(bundle_copy)
    again = repack(digits_bundle[0], bundle_copy)
    assert again.version == m.version  # same content, same version
    note = tmp_path / "note.txt"
    note.write_text("x")
    assert repack(digits_bundle[0], bundle_copy, {"notes.txt": note}).version != m.version
    assert not [p for p in bundle_copy.parent.iterdir() if p.name.startswith(".bundle")]


def test_symlinked_file_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "elsewhere.npz"
    (bundle_copy / "canary.npz").rename(outside)
    (bundle_copy / "canary.npz").symlink_to(outside)
    with pytest.raises(IntegrityError, match="symbolic link"):
        load_cache_model(bundle_copy)


@pytest.mark.parametrize("edit", [
    lambda d: d["variants"].update(int8="evil.onnx"),
    lambda d: d["canary"].update(file="unlisted.npz"),
    lambda d: d["full_model"]["files"].append("full/other.pt"),
])
def test_every_file_the_manifest_uses_must_be_listed(bundle_copy, edit):
    rewrite_manifest(bundle_copy, edit)
    with pytest.raises(ManifestError, match="not listed"):
        load_cache_model(bundle_copy)
