"""The gRPC inference service: validate, queue into the batcher, answer.

Every request is checked before it reaches the model: model name, dtype,
shape, byte size, finiteness, unknown fields. A bad one gets INVALID_ARGUMENT
with a message that says what is wrong; a full queue RESOURCE_EXHAUSTED; a
request whose deadline passes while queued DEADLINE_EXCEEDED. On the stream,
an error answers that request alone and the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf import message as pb_message
from google.protobuf import unknown_fields

from cachenet.core import tensors
from cachenet.core.gate import softmax
from cachenet.core.ids import check_agent_id
from cachenet.exceptions import ConfigError, ProtocolError, QueueFullError
from cachenet.protocol.tls import peer_identity
from cachenet.protocol.v1 import inference_pb2 as pb
from cachenet.protocol.v1 import inference_pb2_grpc as pb_grpc  # the servicer base class
from cloud_server.batcher import DynamicBatcher

log = logging.getLogger(__name__)

#: Requests one StreamInfer call may have read and not yet written back.
STREAM_WINDOW = 256


@dataclass
class ModelCard:
    """What the service runs, as clients see it."""

    name: str
    version: str
    input_shape: tuple[int, ...]  # without the batch axis
    input_dtype: str
    classes: list[str]
    device: str
    #: float32 inputs may also come as their uint8 pixel levels (x = levels * scale)
    input_scale: float | None = None


@dataclass
class Undecodable:
    """Stands in for a request whose bytes do not parse, so it gets INVALID_ARGUMENT."""

    reason: str


def lenient_parser(cls: type[pb_message.Message]):
    def parse(data: bytes) -> pb_message.Message | Undecodable:
        try:
            return cls.FromString(data)
        except pb_message.DecodeError as exc:
            return Undecodable(f"request does not decode as {cls.DESCRIPTOR.full_name}: {exc}")
    return parse


def add_to_server(service: InferenceService, server: grpc.aio.Server) -> None:
    """Register ``service`` like the generated helper, but parse requests leniently."""
    handlers = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            service.Infer, request_deserializer=lenient_parser(pb.InferRequest),
            response_serializer=pb.InferResponse.SerializeToString),
        "StreamInfer": grpc.stream_stream_rpc_method_handler(
            service.StreamInfer, request_deserializer=lenient_parser(pb.InferRequest),
            response_serializer=pb.StreamInferResponse.SerializeToString),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            service.GetModelInfo, request_deserializer=lenient_parser(pb.ModelInfoRequest),
            response_serializer=pb.ModelInfo.SerializeToString),
    }
    name = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))


def check_identity(request: pb.InferRequest | Undecodable, identity: str | None) -> None:
    """An agent id a request names is one (INVALID_ARGUMENT); with mutual TLS an agent
    escalates only as itself (PERMISSION_DENIED for another; none named: its own)."""
    if isinstance(request, Undecodable):
        return
    if identity is not None and not request.agent_id:
        request.agent_id = identity  # it calls as its certificate says
    if request.agent_id:
        try:
            check_agent_id(request.agent_id)
        except ConfigError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    if identity is not None and request.agent_id != identity:
        raise RequestError(grpc.StatusCode.PERMISSION_DENIED,
                           f"this certificate is agent '{identity}'; the request says "
                           f"'{request.agent_id[:128]}'")


class RequestError(Exception):
    """A request the service refuses, with the status code to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def reject_unknown_fields(msg: pb_message.Message, where: str) -> None:
    unknown = unknown_fields.UnknownFieldSet(msg)
    if len(unknown):
        numbers = sorted({f.field_number for f in unknown})
        raise ProtocolError(f"{where} has unknown field number(s) {numbers}; this server "
                            "speaks cachenet.v1")
    for fd, value in msg.ListFields():
        if isinstance(value, pb_message.Message):
            reject_unknown_fields(value, f"{where}.{fd.name}")


class InferenceService(pb_grpc.InferenceServiceServicer):
    def __init__(self, card: ModelCard, batcher: DynamicBatcher, *,
                 max_tensor_bytes: int = tensors.MAX_TENSOR_BYTES) -> None:
        self.card = card
        self.batcher = batcher
        self.max_tensor_bytes = max_tensor_bytes
        #: called with (agent id, inputs, full-model labels) for each answered escalation
        self.observer: Callable[[str, np.ndarray, np.ndarray], None] | None = None
        self.counts = {"received": 0, "ok": 0, "invalid": 0, "overloaded": 0, "deadline": 0,
                       "error": 0, "spooled": 0}
        #: requests a stream may have read and not yet answered on the wire
        self.stream_window = STREAM_WINDOW
        self.stream_held = 0  # across streams, now
        self.stream_held_max = 0  # the most one stream held

    def validate(self, request: pb.InferRequest | Undecodable) -> np.ndarray:
        if isinstance(request, Undecodable):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        try:
            reject_unknown_fields(request, "InferRequest")
            if request.model_name not in ("", self.card.name):
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"unknown model '{request.model_name}'; this server runs "
                                   f"'{self.card.name}'")
            if not request.HasField("input"):
                raise ProtocolError("request has no input tensor")
            t = request.input
            x = tensors.decode(t.dtype, t.shape, t.raw_data, max_bytes=self.max_tensor_bytes)
            # A camera's frame may come as its uint8 pixel levels: checked as it is, then
            # turned into the float32 it stands for (4x its bytes: only once it fits).
            levels = x.dtype == np.uint8 and self.card.input_scale is not None
            if x.dtype.name != self.card.input_dtype and not levels:
                raise ProtocolError(f"input dtype is {x.dtype.name}, the model takes "
                                    f"{self.card.input_dtype}")
            if x.ndim != len(self.card.input_shape) + 1 or x.shape[1:] != self.card.input_shape:
                raise ProtocolError(f"input shape is {list(x.shape)}, the model takes "
                                    f"[N, {', '.join(map(str, self.card.input_shape))}]")
            if not 1 <= len(x) <= self.batcher.max_batch_size:
                raise ProtocolError(f"batch of {len(x)} inputs; this server takes 1 to "
                                    f"{self.batcher.max_batch_size}")
            if levels:
                x = tensors.from_levels(x, self.card.input_scale)  # type: ignore[arg-type]
            tensors.check_finite(x)
        except ProtocolError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return x

    async def _answer(self, request: pb.InferRequest, timeout: float | None) -> pb.InferResponse:
        received = time.perf_counter()
        self.counts["received"] += 1
        try:
            x = self.validate(request)
        except RequestError:
            self.counts["invalid"] += 1
            raise
        log.debug("queued request %s (%d inputs) from %s", request.id, len(x),
                  request.agent_id or "-")
        try:
            result = await asyncio.wait_for(self.batcher.infer(x), timeout)
        except QueueFullError as exc:
            self.counts["overloaded"] += 1
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except asyncio.TimeoutError:
            self.counts["deadline"] += 1
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "deadline passed while the request was queued") from None
        except Exception as exc:
            self.counts["error"] += 1
            raise RequestError(grpc.StatusCode.INTERNAL, f"model failed: {exc}") from None
        rows = result.logits  # an array, or the layer caches' rows (cloud_server.layered)
        logits = getattr(rows, "logits", rows).astype(np.float32, copy=False)
        unfit = np.flatnonzero(~np.isfinite(logits).all(1))
        if len(unfit):  # finite inputs can still overflow the model (3e38, say)
            self.counts["invalid"] += 1
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"the model's output for input(s) {unfit[:8].tolist()} is not "
                               "finite: their values lie outside what the model takes")
        self.counts["ok"] += 1
        if request.spooled:
            self.counts["spooled"] += 1  # answered by the agent while we were away
        layered = {"answered_by": rows.by} if hasattr(rows, "by") else {}
        macs = {"macs": int(rows.macs.sum()), "full_macs": rows.full_macs * len(rows)} \
            if hasattr(rows, "macs") else {}
        if self.observer is not None and request.agent_id:
            self.observer(request.agent_id, x, logits.argmax(1))
        probs = softmax(logits)
        dtype, shape, raw = tensors.encode(logits)
        return pb.InferResponse(
            id=request.id, model_name=self.card.name, model_version=self.card.version,
            logits=pb.Tensor(dtype=dtype, shape=shape, raw_data=raw),
            labels=logits.argmax(1).tolist(), confidences=probs.max(1).tolist(),
            timings=pb.Timings(queue_us=result.queue_us, compute_us=result.compute_us,
                               total_us=int((time.perf_counter() - received) * 1e6),
                               batch_size=result.batch_size, **macs), **layered)

    async def Infer(self, request: pb.InferRequest,
                    context: grpc.aio.ServicerContext) -> pb.InferResponse:
        try:
            check_identity(request, peer_identity(context))
            return await self._answer(request, context.time_remaining())
        except RequestError as exc:
            await context.abort(exc.code, str(exc))
            raise AssertionError("unreachable: abort raises") from None

    async def StreamInfer(self, request_iterator: AsyncIterator[pb.InferRequest],
                          context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[pb.StreamInferResponse]:
        out: asyncio.Queue[pb.StreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task] = set()
        # Backpressure: at most ``stream_window`` requests of this stream are read and not
        # yet written back. A client that stops reading its answers stops the writes
        # (gRPC flow control), then the reads: memory stays bounded.
        identity = peer_identity(context)
        window = asyncio.Semaphore(self.stream_window)
        held = [0]  # this stream's share of ``stream_held``

        async def one(req: pb.InferRequest | Undecodable) -> None:
            request_id = "" if isinstance(req, Undecodable) else req.id
            try:
                check_identity(req, identity)
                resp = await self._answer(req, context.time_remaining())
                await out.put(pb.StreamInferResponse(id=request_id, response=resp))
            except RequestError as exc:
                await out.put(pb.StreamInferResponse(id=request_id,
                                                     error_code=exc.code.value[0],
                                                     error_message=str(exc)))
            except Exception as exc:  # a bug costs this request an error, not the stream
                log.exception("stream request failed")
                await out.put(pb.StreamInferResponse(
                    id=request_id, error_code=grpc.StatusCode.INTERNAL.value[0],
                    error_message=f"{type(exc).__name__}: {exc}"))

        async def reader() -> None:
            async for req in request_iterator:
                await window.acquire()
                held[0] += 1
                self.stream_held += 1
                self.stream_held_max = max(self.stream_held_max, held[0])
                task = asyncio.create_task(one(req))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*list(pending), return_exceptions=True)
            await out.put(None)

        read_task = asyncio.create_task(reader())
        try:
            while (item := await out.get()) is not None:
                yield item  # returns once gRPC has taken it (flow control permitting)
                held[0] -= 1
                self.stream_held -= 1
                window.release()
        finally:
            self.stream_held -= held[0]
            read_task.cancel()
            for task in list(pending):
                task.cancel()

    async def GetModelInfo(self, request: pb.ModelInfoRequest | Undecodable,
                           context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        c = self.card
        return pb.ModelInfo(name=c.name, version=c.version, input_dtype=c.input_dtype,
                            input_shape=[-1, *c.input_shape], classes=c.classes,
                            max_batch_size=self.batcher.max_batch_size, device=c.device)
