"""Bundles over the control plane: split into chunks, reassembled, verified, installed.

The cloud sends a header (manifest, file list with sizes and sha256, a sha256
over all the bytes), then each file in chunks carrying their own sha256, then
an end marker. :class:`PushAssembler` checks every chunk, every file and the
whole as they arrive; :func:`install` writes the result into a new versioned
folder through a staging folder and a rename, verifies it again as a bundle,
and keeps the newest ``keep`` versions. numpy-free, torch-free: the edge runs it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cachenet.bundle import safe_relpath, verify_bundle
from cachenet.exceptions import IntegrityError
from cachenet.v1 import control_pb2 as pb

CHUNK_BYTES = 256 << 10


def iter_push(bundle: Path, push_id: str, *, chunk_bytes: int = CHUNK_BYTES
              ) -> Iterator[pb.PushMessage]:
    """The messages that carry ``bundle`` (verified first) to an agent."""
    manifest = verify_bundle(bundle)
    names = sorted(manifest.files)
    blobs = {name: (bundle / name).read_bytes() for name in names}
    whole = hashlib.sha256()
    for name in names:
        whole.update(blobs[name])
    yield pb.PushMessage(header=pb.BundleHeader(
        push_id=push_id, version=manifest.version,
        manifest_json=(bundle / "manifest.json").read_bytes(),
        files=[pb.FileEntry(name=n, size=len(blobs[n]), sha256=manifest.files[n]["sha256"])
               for n in names],
        sha256=whole.hexdigest()))
    for name in names:
        data = blobs[name]
        for offset in range(0, max(len(data), 1), chunk_bytes):
            piece = data[offset:offset + chunk_bytes]
            yield pb.PushMessage(chunk=pb.BundleChunk(
                push_id=push_id, file=name, offset=offset, data=piece,
                sha256=hashlib.sha256(piece).hexdigest()))
    yield pb.PushMessage(end=pb.BundleEnd(push_id=push_id))


class PushAssembler:
    """Feed it a push's messages; :meth:`feed` returns the finished push at its end."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.header: pb.BundleHeader | None = None
        self.parts: dict[str, bytearray] = {}

    def feed(self, msg: pb.PushMessage) -> tuple[pb.BundleHeader, dict[str, bytes]] | None:
        kind = msg.WhichOneof("kind")
        if kind == "header":
            self.header, self.parts = msg.header, {}
            total = sum(f.size for f in msg.header.files)
            if total > self.max_bytes:
                raise IntegrityError(f"push {msg.header.push_id} is {total} bytes, over the "
                                     f"limit of {self.max_bytes}")
            for f in msg.header.files:
                safe_relpath(f.name)
                self.parts[f.name] = bytearray()
            return None
        if self.header is None:
            raise IntegrityError(f"push message '{kind}' arrived before a header")
        if kind == "chunk":
            self._chunk(msg.chunk)
            return None
        if kind == "end":
            return self._finish(msg.end.push_id)
        raise IntegrityError("empty push message")

    def _chunk(self, c: pb.BundleChunk) -> None:
        assert self.header is not None
        if c.push_id != self.header.push_id:
            raise IntegrityError(f"chunk of push {c.push_id} inside push {self.header.push_id}")
        if c.file not in self.parts:
            raise IntegrityError(f"chunk for '{c.file}', which the header does not list")
        part = self.parts[c.file]
        if c.offset != len(part):
            raise IntegrityError(f"chunk of '{c.file}' at offset {c.offset}, expected "
                                 f"{len(part)} (lost or reordered chunk)")
        if hashlib.sha256(c.data).hexdigest() != c.sha256:
            raise IntegrityError(f"chunk of '{c.file}' at offset {c.offset} fails its sha256")
        part.extend(c.data)

    def _finish(self, push_id: str) -> tuple[pb.BundleHeader, dict[str, bytes]]:
        header, parts = self.header, self.parts
        assert header is not None
        self.header, self.parts = None, {}
        if push_id != header.push_id:
            raise IntegrityError(f"end of push {push_id} inside push {header.push_id}")
        whole = hashlib.sha256()
        for f in header.files:
            data = bytes(parts[f.name])
            if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
                raise IntegrityError(f"push {push_id}: '{f.name}' arrived as {len(data)} bytes "
                                     f"that do not match its size {f.size} or sha256")
            whole.update(data)
        if whole.hexdigest() != header.sha256:
            raise IntegrityError(f"push {push_id}: the bundle's overall sha256 does not match")
        return header, {name: bytes(data) for name, data in parts.items()}


def install(root: Path, header: pb.BundleHeader, files: dict[str, bytes], *, keep: int = 3,
            protect: tuple[Path, ...] = ()) -> Path:
    """Write a verified push to ``root/<version>`` atomically; keep the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / header.version
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    try:
        for name, data in files.items():
            path = staging / safe_relpath(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (staging / "manifest.json").write_bytes(header.manifest_json)
        manifest = verify_bundle(staging)  # the manifest vouches for exactly these bytes
        if manifest.version != header.version:
            raise IntegrityError(f"push says version {header.version}, its manifest says "
                                 f"{manifest.version}")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    keepers = {p.resolve() for p in protect} | {target.resolve()}
    versions = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime)
    for old in versions[:-keep]:
        if old.resolve() not in keepers:
            shutil.rmtree(old, ignore_errors=True)
    return target


def manifest_version(manifest_json: bytes) -> str:
    return str(json.loads(manifest_json)["version"])
