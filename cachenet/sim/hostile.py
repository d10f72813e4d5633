"""Pushes as a hostile cloud would send them: any version, any files, any manifest.

:func:`iter_push` refuses to send a bundle that does not verify; these helpers
build the messages by hand, so tests can check what the receiving side does with
pushes a well-behaved cloud never sends.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cachenet.protocol.v1 import control_pb2 as pb


def bundle_parts(bundle: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A bundle's manifest (as a dict) and its files' bytes."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    return manifest, {name: (bundle / name).read_bytes() for name in manifest["files"]}


def rehashed(manifest: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:
    """``manifest`` with ``files`` listed, hashes and sizes as they are."""
    return {**manifest, "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
                                  for n, d in files.items()}}


def raw_push(push_id: str, version: str, files: dict[str, bytes], manifest: dict[str, Any]
             | bytes, *, chunk_bytes: int = 4096) -> list[pb.PushMessage]:
    """The messages of a push, consistent in every hash, whatever they carry."""
    manifest_json = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    whole = hashlib.sha256()
    for data in files.values():
        whole.update(data)
    messages = [pb.PushMessage(header=pb.BundleHeader(
        push_id=push_id, version=version, manifest_json=manifest_json,
        files=[pb.FileEntry(name=n, size=len(d), sha256=hashlib.sha256(d).hexdigest())
               for n, d in files.items()], sha256=whole.hexdigest()))]
    for name, data in files.items():
        for offset in range(0, max(len(data), 1), chunk_bytes):
            piece = data[offset:offset + chunk_bytes]
            messages.append(pb.PushMessage(chunk=pb.BundleChunk(
                push_id=push_id, file=name, offset=offset, data=piece,
                sha256=hashlib.sha256(piece).hexdigest())))
    messages.append(pb.PushMessage(end=pb.BundleEnd(push_id=push_id)))
    return messages


def hostile(bundle: Path, push_id: str, *, version: str | None = None,
            edit: Any = None, extra: dict[str, bytes] | None = None) -> list[pb.PushMessage]:
    """A push of ``bundle`` whose manifest says ``version`` and is changed by ``edit``
    (a function of the manifest dict), with ``extra`` files, all hashes consistent."""
    manifest, files = bundle_parts(bundle)
    files = {**files, **(extra or {})}
    manifest = rehashed(manifest, files)
    if edit is not None:
        edit(manifest)
    if version is not None:
        manifest["version"] = version
    return raw_push(push_id, str(manifest["version"]), files, manifest)
