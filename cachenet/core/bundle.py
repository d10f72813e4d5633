"""Cache bundles: a directory holding the cache model and a manifest that vouches for it.

Layout::

    <bundle>/
        manifest.json        what the model is, how to feed it, how to gate it
        model.onnx           the fp32 cache model
        model.int8.onnx      optional int8 variant
        canary.npz           inputs and expected logits, checked after loading
        full/                optional: the full model for the cloud (see cachenet.toolchain.full)

``manifest.json`` (:mod:`cachenet.core.manifest`, which checks its schema) lists
every file with its sha256 and size; nothing in the bundle is trusted until
:func:`verify_bundle` has checked all of them. The
``signature`` field is reserved for a signature over the manifest. This module
uses only the standard library and numpy: the edge runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from cachenet.core import strictjson
from cachenet.core.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    Manifest,
    read_manifest,
    safe_relpath,
    validate,
)
from cachenet.exceptions import BundleError, IntegrityError, ManifestError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _through_link(root: Path, rel: PurePosixPath) -> bool:
    """True when ``rel`` or any folder on the way to it is a symbolic link."""
    path = root
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            return True
    return False


def verify_bundle(root: Path) -> Manifest:
    """Read the manifest and check every listed file's size and sha256.

    Raises :class:`IntegrityError` naming the first file that is missing or
    does not match.
    """
    root = Path(root)
    manifest = read_manifest(root)
    for name, entry in manifest.files.items():
        rel = safe_relpath(name)
        path = root / rel
        if _through_link(root, rel):
            raise IntegrityError(f"bundle {root}: '{name}' is a symbolic link; bundles hold "
                                 "plain files only")
        if not path.is_file():
            raise IntegrityError(f"bundle {root}: file '{name}' listed in the manifest is missing")
        if "bytes" in entry and path.stat().st_size != entry["bytes"]:
            raise IntegrityError(f"bundle {root}: '{name}' is {path.stat().st_size} bytes, the "
                                 f"manifest says {entry['bytes']} (truncated or replaced?)")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise IntegrityError(f"bundle {root}: sha256 of '{name}' is {digest[:16]}..., the "
                                 f"manifest says {str(entry['sha256'])[:16]}... (corrupted or "
                                 "tampered with)")
    return manifest


def write_bundle(root: Path, fields: dict[str, Any], files: dict[str, Path]) -> Manifest:
    """Assemble a bundle at ``root`` from ``files`` (bundle name -> source path).

    The bundle is built in a temporary sibling directory and renamed into
    place, so ``root`` never holds a half-written bundle. ``version``
    is a digest of the files' hashes and the fields; ``signature`` is left null. An
    existing bundle at ``root`` is replaced; any other non-empty path is refused.
    """
    root = root.resolve()
    if root.exists() and (not root.is_dir() or (any(root.iterdir())
                                                and not (root / MANIFEST).exists())):
        raise BundleError(f"{root} exists and is not a cache bundle; refusing to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        entries: dict[str, dict[str, Any]] = {}
        for name, src in sorted(files.items()):
            dst = staging / safe_relpath(name)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            entries[name] = {"sha256": sha256_file(dst), "bytes": dst.stat().st_size}
        # The version covers the files and the fields (a new threshold is a new version).
        digest = hashlib.sha256(json.dumps([entries, fields], sort_keys=True,
                                           default=str).encode()).hexdigest()
        data = {"format": FORMAT_VERSION, "version": digest[:12],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **fields, "files": entries, "signature": None}
        try:
            validate(data)
        except ManifestError as exc:
            raise ManifestError(f"cannot write the bundle {root}: {exc}") from None
        (staging / MANIFEST).write_text(strictjson.dumps(data, indent=2) + "\n")
        os.chmod(staging, 0o755)
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            root.rename(old)
            staging.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return read_manifest(root)


def repack(source: Path, dest: Path, extra: dict[str, Path] | None = None, *,
           fields: dict[str, Any] | None = None) -> Manifest:
    """Write a copy of the verified bundle ``source`` to ``dest``, with ``extra`` files.

    The manifest's fields are kept, with ``fields`` replacing top-level ones;
    files, version and creation time are new.
    """
    m = verify_bundle(source)
    kept = {k: v for k, v in m.data.items()
            if k not in ("files", "format", "version", "created", "signature")}
    fields = kept | dict(fields or {})
    files = {name: Path(source) / name for name in m.files} | dict(extra or {})
    return write_bundle(dest, fields, files)
