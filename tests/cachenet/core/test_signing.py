"""Signed bundles: what the signature covers, and every way it fails to verify."""

from __future__ import annotations

import json
import stat

import pytest

from cachenet.core.bundle import verify_bundle
from cachenet.core.manifest import read_manifest
from cachenet.core.signing import (
    check_signature,
    device_view,
    generate_keys,
    load_private_key,
    load_public_key,
    sign_bundle,
    sign_manifest,
)
from cachenet.exceptions import ConfigError, IntegrityError


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    private, public = generate_keys(root / "fleet")
    other, _ = generate_keys(root / "other")
    return load_private_key(private), load_public_key(public), load_private_key(other), private


def test_keys_are_written_once_and_the_private_one_is_private(keys):
    _, _, _, private = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="refusing to replace"):
        generate_keys(private.parent)


def test_a_signed_manifest_verifies_and_any_change_breaks_it(keys, digits_bundle):
    key, public, _, _ = keys
    data = read_manifest(digits_bundle[0]).data
    signed = sign_manifest(data, key)
    check_signature(signed, public)
    for edit in (lambda d: d["gate"].update(threshold=0.0),
                 lambda d: d["files"]["model.onnx"].update(sha256="0" * 64),
                 lambda d: d.update(version="other"), lambda d: d.update(created="2000")):
        changed = json.loads(json.dumps(signed))
        edit(changed)
        with pytest.raises(IntegrityError, match="does not verify"):
            check_signature(changed, public)


def test_the_signature_covers_what_a_device_receives(keys, digits_bundle):
    """The cloud's copy (with full/) and the device's (without) verify alike."""
    key, public, _, _ = keys
    signed = sign_manifest(read_manifest(digits_bundle[0]).data, key)
    view = device_view(signed)
    assert not [n for n in view["files"] if n.startswith("full/")]
    assert view["full_model"] is None and view["signature"] == signed["signature"]
    check_signature(view, public)


@pytest.mark.parametrize(("signature", "message"), [
    (None, "unsigned"), ("", "unsigned"), ("rsa:abc", "is not 'ed25519:"),
    ("ed25519:***", "not valid base64"), ("ed25519:" + "A" * 88, "does not verify")])
def test_bad_signatures_are_named(keys, digits_bundle, signature, message):
    _, public, _, _ = keys
    data = {**read_manifest(digits_bundle[0]).data, "signature": signature}
    with pytest.raises(IntegrityError, match=message):
        check_signature(data, public)


def test_another_key_does_not_verify(keys, digits_bundle):
    _, public, other, _ = keys
    with pytest.raises(IntegrityError, match="does not verify"):
        check_signature(sign_manifest(read_manifest(digits_bundle[0]).data, other), public)


def test_signing_a_bundle_in_place_keeps_it_a_bundle(keys, bundle_copy):
    key, public, _, _ = keys
    before = verify_bundle(bundle_copy)
    sign_bundle(bundle_copy, key)
    after = verify_bundle(bundle_copy)
    assert after.version == before.version
    check_signature(after.data, public)


def test_keys_that_are_not_keys_are_config_errors(tmp_path):
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="cannot read the signing key"):
        load_private_key(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="cannot read the trusted key"):
        load_public_key(tmp_path / "missing.pub")
