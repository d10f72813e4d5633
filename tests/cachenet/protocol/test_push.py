"""Bundles over the control plane: chunks verified as they arrive, hostile headers refused."""

from __future__ import annotations

import pytest

from cachenet.core.bundle import verify_bundle
from cachenet.core.install import install
from cachenet.exceptions import IntegrityError
from cachenet.protocol.push import PushAssembler, iter_push
from cachenet.sim.hostile import bundle_parts, raw_push, rehashed


def feed_all(messages):
    assembler = PushAssembler()
    return [assembler.feed(m) for m in messages][-1]


def test_push_roundtrip_and_damage(digits_bundle, tmp_path):
    header, files = feed_all(list(iter_push(digits_bundle[0], "p1", chunk_bytes=4096)))
    path = install(tmp_path / "pushed", header.version, files, header.manifest_json)
    assert verify_bundle(path).version == verify_bundle(digits_bundle[0]).version

    flipped = list(iter_push(digits_bundle[0], "p2", chunk_bytes=4096))
    data = bytearray(flipped[2].chunk.data)
    data[0] ^= 1
    flipped[2].chunk.data = bytes(data)
    with pytest.raises(IntegrityError, match="fails its sha256"):
        feed_all(flipped)
    lost = list(iter_push(digits_bundle[0], "p3", chunk_bytes=4096))
    del lost[2]
    with pytest.raises(IntegrityError, match=r"lost or reordered|do not match"):
        feed_all(lost)


@pytest.mark.parametrize("version", ["..", ".", "../x", "a/b", "", "/etc", "x" * 65, "a\\b"])
def test_a_header_whose_version_is_not_a_version_is_refused(digits_bundle, version):
    manifest, files = bundle_parts(digits_bundle[0])
    messages = raw_push("evil", version, files, manifest)
    with pytest.raises(IntegrityError, match="is not a bundle version"):
        PushAssembler().feed(messages[0])


@pytest.mark.parametrize("names,match", [
    (["a", "a/b"], "also a folder"),
    (["../up"], "outside the bundle"),
    (["/abs"], "outside the bundle"),
    (["a//b"], "normal form"),
    (["./a"], "normal form"),
])
def test_a_header_whose_files_cannot_be_installed_is_refused(names, match):
    files = {n: b"x" for n in names}
    messages = raw_push("evil", "v1", files, rehashed({"version": "v1"}, files))
    with pytest.raises(IntegrityError, match=match):
        PushAssembler().feed(messages[0])


def test_negative_sizes_cannot_hide_a_huge_file_from_the_limit():
    """Sizes of 2^40 and -2^40 sum to 0: each must be checked, not only the sum."""
    files = {"a": b"x", "b": b"y"}
    header = raw_push("neg", "v1", files, rehashed({"version": "v1"}, files))[0]
    header.header.files[0].size, header.header.files[1].size = 1 << 40, -(1 << 40)
    with pytest.raises(IntegrityError, match="negative size"):
        PushAssembler(max_bytes=1000).feed(header)


def test_chunks_past_a_files_declared_size_are_refused_as_they_arrive(digits_bundle):
    """A header declaring a 1-byte file, then far more bytes of valid chunks."""
    files = {"model.onnx": b"x"}
    header = raw_push("big", "v1", files, rehashed({"version": "v1"}, files))[0]
    big = raw_push("big", "v1", {"model.onnx": b"y" * 100_000}, b"{}")[1:-1]
    assembler = PushAssembler()
    assembler.feed(header)
    with pytest.raises(IntegrityError, match="past its declared 1 bytes"):
        for message in big:
            assembler.feed(message)
    assert sum(len(p) for p in assembler.parts.values()) <= 1


def test_a_push_never_carries_the_full_model(digits_bundle):
    """full/ is the cloud's: neither its files nor the manifest section naming them go out,
    and what arrives is a bundle that verifies on its own."""
    import json

    from cachenet.protocol.push import PushAssembler, iter_push

    messages = list(iter_push(digits_bundle[0], "p-device"))
    header = messages[0].header
    assert [f.name for f in header.files] and not [f.name for f in header.files
                                                   if f.name.startswith("full/")]
    assert not [m for m in messages if m.WhichOneof("kind") == "chunk"
                and m.chunk.file.startswith("full/")]
    manifest = json.loads(header.manifest_json)
    assert manifest["full_model"] is None
    assert set(manifest["files"]) == {f.name for f in header.files}
    assembler = PushAssembler()
    done = None
    for m in messages:
        done = assembler.feed(m) or done
    assert done is not None and set(done[1]) == set(manifest["files"])


def test_a_cloud_with_a_key_signs_what_it_stored_unsigned(digits_bundle, tmp_path):
    import json

    from cachenet.core.signing import (
        check_signature,
        generate_keys,
        load_private_key,
        load_public_key,
    )
    from cachenet.protocol.push import iter_push

    private, public = generate_keys(tmp_path / "k")
    header = next(iter(iter_push(digits_bundle[0], "p", signing_key=load_private_key(private))))
    check_signature(json.loads(header.header.manifest_json), load_public_key(public))
