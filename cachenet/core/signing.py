"""Signed bundles: an Ed25519 signature over what a device receives of a manifest.

A device never receives the full model: a push carries the *device view* of a
bundle (:func:`device_view`: the files under ``full/`` left out, and the
``full_model`` section that names them). The signature covers exactly that view,
minus the ``signature`` field itself, as canonical JSON (sorted keys, no spaces),
so the cloud's copy (with ``full/``) and the device's (without) carry the same
signature and both verify. The manifest lists every file's sha256, so a valid
signature vouches for every byte a device runs.

``signature`` is ``"ed25519:<base64>"``. Keys are PEM files
(:func:`generate_keys`); a device pins the fleet's public key
(``cachenet-edge --trusted-key``) and refuses what it does not verify
(:func:`check_signature`). Needs the ``cryptography`` package.
"""

from __future__ import annotations

import base64
import copy
import os
from pathlib import Path
from typing import Any

from cachenet.core import strictjson
from cachenet.exceptions import ConfigError, IntegrityError

PREFIX = "ed25519:"
#: Files a device never receives: the cloud's full model.
CLOUD_ONLY = "full/"


def device_view(data: dict[str, Any]) -> dict[str, Any]:
    """The manifest a device receives: without the cloud's files and what names them."""
    view = copy.deepcopy(data)
    view["files"] = {n: e for n, e in data["files"].items() if not n.startswith(CLOUD_ONLY)}
    if "full_model" in view:
        view["full_model"] = None
    return view


def signed_bytes(data: dict[str, Any]) -> bytes:
    """What the signature covers: the device view, without the signature, canonical."""
    view = device_view(data)
    view.pop("signature", None)
    return strictjson.dumps(view, sort_keys=True, separators=(",", ":"),
                            ensure_ascii=False).encode()


def generate_keys(out: Path) -> tuple[Path, Path]:
    """A new key pair: ``out/signing.key`` (private, mode 0600) and ``out/signing.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out.mkdir(parents=True, exist_ok=True)
    private, public = out / "signing.key", out / "signing.pub"
    if private.exists():
        raise ConfigError(f"{private} exists; refusing to replace a signing key")
    key = Ed25519PrivateKey.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the trusted key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def sign_manifest(data: dict[str, Any], key: Any) -> dict[str, Any]:
    """``data`` with its ``signature`` set by ``key`` (an Ed25519 private key)."""
    signature = key.sign(signed_bytes(data))
    return {**data, "signature": PREFIX + base64.b64encode(signature).decode()}


def check_signature(data: dict[str, Any], public_key: Any) -> None:
    """IntegrityError unless ``data`` carries a signature ``public_key`` verifies."""
    from cryptography.exceptions import InvalidSignature

    sig = data.get("signature")
    if not sig:
        raise IntegrityError("the bundle is unsigned, and this agent trusts signed bundles "
                             "only")
    if not isinstance(sig, str) or not sig.startswith(PREFIX):
        raise IntegrityError(f"the bundle's signature is not '{PREFIX}<base64>'")
    try:
        raw = base64.b64decode(sig[len(PREFIX):], validate=True)
    except ValueError:
        raise IntegrityError("the bundle's signature is not valid base64") from None
    try:
        public_key.verify(raw, signed_bytes(data))
    except (InvalidSignature, ValueError):
        raise IntegrityError("the bundle's signature does not verify with the trusted key "
                             "(signed by another key, or changed since)") from None


def sign_bundle(root: Path, key: Any) -> None:
    """Sign the bundle at ``root`` in place (its manifest.json; files unchanged)."""
    from cachenet.core.manifest import MANIFEST, read_manifest

    data = read_manifest(root).data
    strictjson.write(root / MANIFEST, sign_manifest(data, key), indent=2)
