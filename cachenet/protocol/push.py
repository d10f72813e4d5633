"""Bundles over the control plane: split into chunks, reassembled, verified.

The cloud sends a header (manifest, file list with sizes and sha256, a sha256
over all the bytes), then each file in chunks carrying their own sha256, then
an end marker. :class:`PushAssembler` checks the header (a valid version, file
names that are plain relative paths, none of them also a folder of another, a
total size under the limit), then every chunk against its file's declared size
and hash, every file and the whole, as they arrive. The agent then installs
the result (:func:`cachenet.core.install.install`). numpy-free, torch-free: the
edge runs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from cachenet.core import strictjson
from cachenet.core.bundle import verify_bundle
from cachenet.core.manifest import check_version, safe_relpath
from cachenet.core.signing import device_view, sign_manifest
from cachenet.exceptions import IntegrityError, ManifestError
from cachenet.protocol.v1 import control_pb2 as pb

CHUNK_BYTES = 256 << 10
#: Files a push may carry: a bundle holds a handful.
MAX_FILES = 256


def held_by_device(manifest: dict) -> set[str]:
    """Files of a bundle that a push leaves out because the device already holds them: a
    head bundle's files that are its base (general) bundle's, byte for byte (its model
    file, and its canary inputs)."""
    head = manifest.get("head")
    if not head:
        return set()
    return set(head.get("from_base") or [manifest["model"]["file"]])


def iter_push(bundle: Path, push_id: str, *, chunk_bytes: int = CHUNK_BYTES,
              signing_key: object = None) -> Iterator[pb.PushMessage]:
    """The messages that carry ``bundle`` (verified first) to an agent: its device view
    (:func:`cachenet.core.signing.device_view`), the files under ``full/`` left behind,
    and those the device holds already (:func:`held_by_device`: the manifest lists them,
    with their sha256, and the agent takes them from its own bundles); signed with
    ``signing_key`` when the stored bundle is not (stored before the key)."""
    manifest = verify_bundle(bundle)
    view = device_view(manifest.data)  # never the cloud's full model
    if signing_key is not None and not view.get("signature"):  # stored before the key
        view = sign_manifest(view, signing_key)
    names = sorted(set(view["files"]) - held_by_device(view))
    blobs = {name: (bundle / name).read_bytes() for name in names}
    whole = hashlib.sha256()
    for name in names:
        whole.update(blobs[name])
    yield pb.PushMessage(header=pb.BundleHeader(
        push_id=push_id, version=manifest.version,
        manifest_json=strictjson.dumps(view, indent=2).encode(),
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
        self.sizes: dict[str, int] = {}

    def feed(self, msg: pb.PushMessage) -> tuple[pb.BundleHeader, dict[str, bytes]] | None:
        kind = msg.WhichOneof("kind")
        if kind == "header":
            self.header, self.parts = None, {}
            self._check_header(msg.header)
            self.header = msg.header
            self.parts = {f.name: bytearray() for f in msg.header.files}
            self.sizes = {f.name: f.size for f in msg.header.files}
            return None
        if self.header is None:
            raise IntegrityError(f"push message '{kind}' arrived before a header")
        if kind == "chunk":
            self._chunk(msg.chunk)
            return None
        if kind == "end":
            return self._finish(msg.end.push_id)
        raise IntegrityError("empty push message")

    def _check_header(self, h: pb.BundleHeader) -> None:
        """Refuse a header whose version or file names could not be installed safely."""
        try:
            check_version(h.version, "pushed version")
            names = [str(safe_relpath(f.name)) for f in h.files]
        except ManifestError as exc:
            raise IntegrityError(f"push {h.push_id[:64]!r}: {exc}") from None
        if (not names or len(set(names)) != len(names)
                or any(n != f.name for n, f in zip(names, h.files, strict=True))):
            raise IntegrityError(f"push {h.push_id[:64]!r} lists no files, a file twice, or a "
                                 "name that is not in normal form")
        folders = {str(p) for n in names for p in PurePosixPath(n).parents if str(p) != "."}
        if folders & set(names):
            raise IntegrityError(f"push {h.push_id[:64]!r} lists a file that is also a folder "
                                 f"of another: {sorted(folders & set(names))}")
        if len(h.files) > MAX_FILES or any(f.size < 0 for f in h.files):
            raise IntegrityError(f"push {h.push_id[:64]!r} lists {len(h.files)} files (at most "
                                 f"{MAX_FILES}) or a negative size")
        total = sum(f.size for f in h.files)
        if total > self.max_bytes:
            raise IntegrityError(f"push {h.push_id[:64]!r} is {total} bytes, over the limit of "
                                 f"{self.max_bytes}")

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
        declared = self.sizes[c.file]
        if len(part) + len(c.data) > declared:
            raise IntegrityError(f"chunks of '{c.file}' run past its declared {declared} bytes")
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
