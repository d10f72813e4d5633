import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachenet.core.bundle import verify_bundle
from cachenet.exceptions import BundleError, ConfigError, IntegrityError
from cachenet.fleet.store import ModelStore


def test_push_list_current_and_prune(digits_bundle, tmp_path):
    store = ModelStore(tmp_path / "store", keep=2)
    assert store.list() == [] and store.current() is None
    first = store.push(digits_bundle[0])
    assert first.seq == 1 and first.current
    for _ in range(3):
        last = store.push(digits_bundle[0])
    versions = store.list()
    assert [v.seq for v in versions] == [3, 4]  # keep=2: the oldest are pruned
    assert [v.current for v in versions] == [False, True]
    assert store.current().seq == last.seq == 4
    verify_bundle(store.current().path)  # stored bundles stay verifiable


def test_agent_falls_back_to_the_fleet_version(digits_bundle, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.push(digits_bundle[0])
    assert store.current(agent="cam-7").seq == 1
    own = store.push(digits_bundle[0], agent="cam-7")
    assert store.current(agent="cam-7") == own and "/agents/cam-7/" in own.path
    assert "/agents/default/" in store.current(agent="cam-8").path
    with pytest.raises(ConfigError, match="agent id"):
        store.push(digits_bundle[0], agent="../escape")


def test_rollback_to_previous_and_to_a_named_version(digits_bundle, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.push(digits_bundle[0])
    with pytest.raises(BundleError, match="no version older"):
        store.rollback()
    store.push(digits_bundle[0])
    store.push(digits_bundle[0])
    assert store.rollback().seq == 2
    assert store.rollback(to="1").seq == 1
    assert store.current().seq == 1
    with pytest.raises(BundleError, match="no stored version 'nope'"):
        store.rollback(to="nope")
    history = (tmp_path / "store" / "agents" / "default" / "history.jsonl").read_text()
    assert [json.loads(line)["event"] for line in history.splitlines()] == [
        "push", "push", "push", "rollback", "rollback"]


def test_a_damaged_bundle_is_not_stored(bundle_copy, tmp_path):
    (bundle_copy / "model.onnx").write_bytes(b"tampered")
    store = ModelStore(tmp_path / "store")
    with pytest.raises(IntegrityError):
        store.push(bundle_copy)
    assert store.list() == []


def test_a_bundle_no_agent_can_load_is_not_made_current(digits_bundle, tmp_path):
    """Every file matches its hash, but the manifest says 2-channel inputs for a model that
    takes one: the agent would refuse it, so the store does, before it is current."""
    from cachenet.core.bundle import repack

    m = verify_bundle(digits_bundle[0])
    bad = repack(digits_bundle[0], tmp_path / "bad",
                 fields={"input": {**m.input, "shape": [-1, 2, 8, 8]}, "label_shift": None})
    store = ModelStore(tmp_path / "store")
    store.push(digits_bundle[0])
    with pytest.raises(BundleError, match="an agent could not load it"):
        store.push(bad.root)
    assert [v.version for v in store.list()] == [m.version]
    assert store.current().version == m.version


def test_models_cli(digits_bundle, tmp_path):
    env = {**os.environ, "CACHENET_STORE": str(tmp_path / "store")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cachenet", "models", *args],
                              capture_output=True, text=True, env=env, timeout=60)

    assert cli("push", str(digits_bundle[0])).returncode == 0
    assert cli("push", str(digits_bundle[0])).returncode == 0
    listed = json.loads(cli("--json", "list").stdout)
    assert [(v["seq"], v["current"]) for v in listed] == [(1, False), (2, True)]
    back = cli("rollback")
    assert back.returncode == 0 and back.stdout.startswith("*    1")
    bad = cli("rollback", "--to", "99")
    assert bad.returncode == 2 and "no stored version '99'" in bad.stderr


def test_push_copies_only_what_the_manifest_lists(bundle_copy, tmp_path):
    """A link inside the bundle folder to a folder elsewhere, and files the manifest does
    not list, stay behind: the store holds the bundle, not the folder it came in."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"\0" * 4096)
    (bundle_copy / "elsewhere").symlink_to(outside, target_is_directory=True)
    (bundle_copy / "notes.txt").write_text("not part of the bundle")
    stored = ModelStore(tmp_path / "store").push(bundle_copy)
    listed = set(json.loads((bundle_copy / "manifest.json").read_text())["files"])
    held = {p.relative_to(stored.path).as_posix()
            for p in Path(stored.path).rglob("*") if p.is_file()}
    assert held == listed | {"manifest.json"}
    verify_bundle(Path(stored.path))


def test_a_store_with_a_signing_key_signs_every_version(bundle_copy, tmp_path):
    from cachenet.core.signing import (
        check_signature,
        generate_keys,
        load_private_key,
        load_public_key,
    )

    private, public = generate_keys(tmp_path / "keys")
    store = ModelStore(tmp_path / "store", signing_key=load_private_key(private))
    stored = store.push(bundle_copy)
    manifest = verify_bundle(Path(stored.path))
    check_signature(manifest.data, load_public_key(public))
    assert json.loads((bundle_copy / "manifest.json").read_text())["signature"] is None


def test_keys_sign_and_signed_push_on_the_command_line(bundle_copy, tmp_path):
    from cachenet.core.signing import check_signature, load_public_key

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cachenet", *args], capture_output=True,
                              text=True, timeout=120)

    made = cli("keys", "--out", str(tmp_path / "k"))
    assert made.returncode == 0 and "signing.pub" in made.stdout
    assert cli("keys", "--out", str(tmp_path / "k")).returncode == 2  # never replaced
    public = load_public_key(tmp_path / "k" / "signing.pub")
    pushed = cli("models", "--store", str(tmp_path / "s"), "--json", "push", str(bundle_copy),
                 "--signing-key", str(tmp_path / "k" / "signing.key"))
    assert pushed.returncode == 0, pushed.stderr
    check_signature(verify_bundle(Path(json.loads(pushed.stdout)[0]["path"])).data, public)
    assert cli("sign", str(bundle_copy), "--key", str(tmp_path / "k" / "signing.key")
               ).returncode == 0
    check_signature(verify_bundle(bundle_copy).data, public)
