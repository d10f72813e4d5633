"""A cloud turned hostile: pushes any version, any files, any manifest.

:func:`~cachenet.protocol.push.iter_push` refuses to send a bundle that does not
verify; :func:`raw_push` and :func:`hostile` build the messages by hand, so tests
and ``bench.pushes`` can check what an agent does with pushes a well-behaved
cloud never sends. :class:`HostileFront` is a gRPC server an agent takes for its
cloud: it streams to subscribers whatever pushes are queued, records the acks,
and forwards every other unary call to a real cloud (or, without one, answers the
control plane's Register and ReportStats itself); streaming calls are UNIMPLEMENTED.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from cachenet.protocol.client import CHANNEL_OPTIONS
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



def signed_push(bundle: Path, push_id: str, version: str, key: Any, *, view: bool = True,
                **fields: Any) -> list[pb.PushMessage]:
    """A push of ``bundle`` as ``version`` with ``fields`` set, signed by ``key`` (None:
    unsigned): its device view, as a cloud sends it, or with the cloud's ``full/``
    files too (``view=False``)."""
    from cachenet.core.signing import sign_manifest

    manifest, files = bundle_parts(bundle)
    if view:
        files = {n: d for n, d in files.items() if not n.startswith("full/")}
        manifest = {**manifest, "full_model": None}
    manifest = {**rehashed(manifest, files), "version": version, **fields}
    if key is not None:
        manifest = sign_manifest(manifest, key)
    else:
        manifest["signature"] = None
    return raw_push(push_id, version, files, manifest)

_CONTROL = "/cachenet.v1.ControlService/"


def _streaming_methods() -> frozenset[str]:
    """Our services' streaming methods: the front forwards unary calls only."""
    from cachenet.protocol.oip import grpc_predict_v2_pb2
    from cachenet.protocol.v1 import generate_pb2, inference_pb2

    return frozenset(f"/{service.full_name}/{m.name}"
                     for module in (inference_pb2, generate_pb2, grpc_predict_v2_pb2)
                     for service in module.DESCRIPTOR.services_by_name.values()
                     for m in service.methods if m.client_streaming or m.server_streaming)


_STREAMING = _streaming_methods()


class HostileFront(grpc.GenericRpcHandler):
    """The agent's ``--cloud``: queued pushes on Subscribe, acks recorded, the rest
    forwarded to ``upstream`` (``host:port`` of a real cloud) as raw bytes."""

    def __init__(self, upstream: str | None = None) -> None:
        self.pushes: queue.Queue[list[pb.PushMessage]] = queue.Queue()
        self.acks: list[pb.AckRequest] = []
        self.subscribed = threading.Event()  # set while a Subscribe stream is open
        self._streams = 0
        self._lock = threading.Lock()
        self._channel = (grpc.insecure_channel(upstream, options=CHANNEL_OPTIONS)
                         if upstream else None)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]
        if method == _CONTROL + "Subscribe":
            return grpc.unary_stream_rpc_method_handler(
                self._subscribe, request_deserializer=pb.SubscribeRequest.FromString,
                response_serializer=pb.PushMessage.SerializeToString)
        if method == _CONTROL + "Ack":
            return grpc.unary_unary_rpc_method_handler(
                self._ack, request_deserializer=pb.AckRequest.FromString,
                response_serializer=pb.AckResponse.SerializeToString)
        if self._channel is not None and method not in _STREAMING:
            return grpc.unary_unary_rpc_method_handler(self._forward(method))
        local = {_CONTROL + "Register": pb.RegisterResponse(stats_interval_s=1),
                 _CONTROL + "ReportStats": pb.StatsAck()}
        if method in local:
            answer = local[method].SerializeToString()
            return grpc.unary_unary_rpc_method_handler(lambda request, context: answer)
        return None  # UNIMPLEMENTED

    def _subscribe(self, request: pb.SubscribeRequest,
                   context: grpc.ServicerContext) -> Iterator[pb.PushMessage]:
        with self._lock:
            self._streams += 1
            self.subscribed.set()
        try:
            while context.is_active():
                try:
                    messages = self.pushes.get(timeout=0.05)
                except queue.Empty:
                    continue
                yield from messages
        finally:
            with self._lock:
                self._streams -= 1
                if not self._streams:
                    self.subscribed.clear()

    def _ack(self, request: pb.AckRequest, context: grpc.ServicerContext) -> pb.AckResponse:
        self.acks.append(request)
        return pb.AckResponse()

    def _forward(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        assert self._channel is not None
        call = self._channel.unary_unary(method)

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                metadata = [(k, v) for k, v in context.invocation_metadata()
                            if not k.startswith(":") and k != "user-agent"]
                return call(request, timeout=context.time_remaining(), metadata=metadata)
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
                raise  # abort raised already; for the type checker

        return forward

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


def start_front(front: HostileFront, host: str = "127.0.0.1") -> tuple[grpc.Server, int]:
    """Serve ``front`` on a free port of ``host``: (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(16), handlers=[front],
                         options=CHANNEL_OPTIONS)
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    return server, port
