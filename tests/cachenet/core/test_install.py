"""Installing a pushed bundle: confined to the state directory, whatever the push says."""

from __future__ import annotations

import json

import pytest

from cachenet.core.install import clean_staging, install, installed, prune
from cachenet.exceptions import BundleError, IntegrityError, ManifestError
from cachenet.sim.hostile import bundle_parts, rehashed


@pytest.fixture
def parts(digits_bundle):
    manifest, files = bundle_parts(digits_bundle[0])
    return manifest, files, json.dumps(manifest).encode()


@pytest.fixture
def device(tmp_path):
    """A device's disk: its configured bundle beside the state directory, and a folder
    outside both that a push must never reach."""
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "manifest.json").write_text("{}")
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep.txt").write_text("mine")
    return tmp_path


def untouched(device) -> bool:
    return ((device / "bundle" / "manifest.json").read_text() == "{}"
            and (device / "victim" / "keep.txt").read_text() == "mine")


@pytest.mark.parametrize("version", ["..", ".", "../victim", "../../victim", "a/b", "/tmp/x"])
def test_a_version_that_is_a_path_is_refused_and_nothing_is_touched(parts, device, version):
    manifest, files, _ = parts
    forged = json.dumps({**manifest, "version": version}).encode()
    with pytest.raises(ManifestError, match="is not a bundle version"):
        install(device / "state", version, files, forged)
    assert untouched(device)


def test_a_good_push_installs_and_pruning_spares_what_is_not_a_version(parts, device):
    manifest, files, raw = parts
    state = device / "state"
    (state / "notes").mkdir(parents=True)  # the operator's, in a shared state dir
    (state / "notes" / "a.txt").write_text("x")
    path = install(state, manifest["version"], files, raw, keep=1)
    assert path == (state / manifest["version"]).resolve() and installed(state) == [path]
    prune(state, keep=0)
    assert installed(state) == [] and (state / "notes" / "a.txt").exists()
    assert untouched(device)


@pytest.mark.parametrize("kind", ["not a bundle", "in use"])
def test_a_push_never_replaces_a_folder_that_is_not_its_to_replace(parts, device, kind):
    """A valid version that names the operator's folder, or the version in use."""
    manifest, files, _ = parts
    state = device / "state"
    name = "notes" if kind == "not a bundle" else manifest["version"]
    (state / name).mkdir(parents=True)
    (state / name / "manifest.json").write_text("mine")
    if kind == "not a bundle":
        (state / name / "manifest.json").unlink()
        (state / name / "a.txt").write_text("mine")
    forged = json.dumps({**manifest, "version": name}).encode()
    with pytest.raises(IntegrityError, match="not an installed version this agent may replace"):
        install(state, name, files, forged, protect=(state / name,))
    assert [p.read_text() for p in (state / name).iterdir()] == ["mine"]


def test_a_version_folder_that_links_outside_is_refused(parts, device):
    manifest, files, raw = parts
    state = device / "state"
    state.mkdir()
    (state / manifest["version"]).symlink_to(device / "victim")
    with pytest.raises(IntegrityError, match="outside the state directory"):
        install(state, manifest["version"], files, raw)
    assert untouched(device) and not list(state.glob(".incoming-*"))


def test_the_manifest_must_list_exactly_the_files_that_came(parts, device):
    manifest, files, raw = parts
    with pytest.raises(IntegrityError, match="carries"):
        install(device / "state", manifest["version"], {**files, "junk.bin": b"x"}, raw)
    with pytest.raises(IntegrityError, match="says version"):
        install(device / "state", "other", files, raw)


def test_a_file_the_push_leaves_out_comes_from_a_bundle_the_device_holds(parts, device,
                                                                        digits_bundle):
    manifest, files, raw = parts
    model = manifest["model"]["file"]
    sent = {k: v for k, v in files.items() if k != model}
    state = device / "state"
    with pytest.raises(IntegrityError, match=f"leaves out {model}, and no bundle"):
        install(state, manifest["version"], sent, raw, sources=(device / "victim",))
    # A source whose file of that name has other bytes does not count.
    (device / "victim" / model).write_bytes(b"not the model")
    with pytest.raises(IntegrityError, match=f"leaves out {model}"):
        install(state, manifest["version"], sent, raw, sources=(device / "victim",))
    assert installed(state) == [] and (device / "victim" / "keep.txt").read_text() == "mine"
    path = install(state, manifest["version"], sent, raw,
                   sources=(device / "victim", digits_bundle[0]))
    assert (path / model).read_bytes() == files[model]
    assert (digits_bundle[0] / model).read_bytes() == files[model]  # copied, not moved


def test_a_disk_error_is_a_bundle_error_and_leaves_no_staging(parts, device):
    """A file name the file system refuses (too long) fails the install cleanly."""
    manifest, files, _ = parts
    long = {**files, "x" * 300: b"data"}
    raw = json.dumps(rehashed(manifest, long)).encode()
    with pytest.raises(BundleError, match="cannot install"):
        install(device / "state", manifest["version"], long, raw)
    assert not list((device / "state").glob(".incoming-*"))
    (device / "state" / ".incoming-left").mkdir()
    clean_staging(device / "state")
    assert not list((device / "state").glob(".incoming-*"))
