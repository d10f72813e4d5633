"""The ``cachenet.v1`` front end: its messages to and from the inference core.

Parsing and the ``cachenet.v1`` shapes of things live here; checking, batching and
answering live in :mod:`cloud_server.inference`, shared with the Open Inference
Protocol's front end (:mod:`cloud_server.oip`). A bad request gets INVALID_ARGUMENT
with a message that says what is wrong; a full queue RESOURCE_EXHAUSTED; a request
whose deadline passes while queued DEADLINE_EXCEEDED. On the stream, an error answers
that request alone and the stream goes on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import numpy as np

from cachenet.core import tensors
from cachenet.exceptions import RequestRefused
from cachenet.protocol.tls import peer_identity
from cachenet.protocol.v1 import inference_pb2 as pb
from cachenet.protocol.v1 import inference_pb2_grpc as pb_grpc  # the servicer base class
from cloud_server.inference import Answer, InferenceCore, agent_for
from cloud_server.wire import (
    StreamHolds,
    Undecodable,
    abort,
    lenient_parser,
    reject_unknown_fields,
    status,
    windowed_stream,
)

log = logging.getLogger(__name__)

#: Requests one StreamInfer call may have read and not yet written back.
STREAM_WINDOW = 256


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


class InferenceService(pb_grpc.InferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self.card, self.batcher, self.counts = core.card, core.batcher, core.counts
        #: requests a stream may have read and not yet answered on the wire
        self.holds = StreamHolds(STREAM_WINDOW)

    def _parse(self, request: pb.InferRequest | Undecodable) -> np.ndarray:
        if isinstance(request, Undecodable):
            raise RequestRefused("INVALID_ARGUMENT", request.reason, reason="undecodable")
        reject_unknown_fields(request, "InferRequest")
        self.core.check_model(request.model_name)
        if not request.HasField("input"):
            raise RequestRefused("INVALID_ARGUMENT", "request has no input tensor",
                                 reason="no_input", field="input")
        t = request.input
        return tensors.decode(t.dtype, t.shape, t.raw_data, max_bytes=self.core.max_tensor_bytes)

    async def _answer(self, request: pb.InferRequest | Undecodable,
                      identity: str | None, timeout: float | None) -> pb.InferResponse:
        agent = "" if isinstance(request, Undecodable) else request.agent_id
        try:
            agent = agent_for(agent, identity)
        except RequestRefused as exc:
            raise self.core.refuse(exc) from None
        answer = await self.core.answer(
            lambda: self._parse(request), agent_id=agent, timeout=timeout,
            request_id="" if isinstance(request, Undecodable) else request.id,
            spooled=not isinstance(request, Undecodable) and request.spooled)
        assert not isinstance(request, Undecodable)  # parse refused it otherwise
        return self.response(request.id, answer)

    def response(self, request_id: str, a: Answer) -> pb.InferResponse:
        macs = {"macs": a.macs, "full_macs": a.full_macs} if a.macs is not None else {}
        dtype, shape, raw = tensors.encode(a.logits)
        return pb.InferResponse(
            id=request_id, model_name=self.card.name, model_version=self.card.version,
            logits=pb.Tensor(dtype=dtype, shape=shape, raw_data=raw),
            labels=a.labels.tolist(), confidences=a.confidences.tolist(),
            timings=pb.Timings(queue_us=a.queue_us, compute_us=a.compute_us,
                               total_us=a.total_us, batch_size=a.batch_size, **macs),
            answered_by=a.answered_by)

    async def Infer(self, request: pb.InferRequest,
                    context: grpc.aio.ServicerContext) -> pb.InferResponse:
        try:
            return await self._answer(request, peer_identity(context),
                                      context.time_remaining())
        except RequestRefused as exc:
            await abort(context, exc)
            raise AssertionError("unreachable: abort raises") from None

    async def StreamInfer(self, request_iterator: AsyncIterator[pb.InferRequest | Undecodable],
                          context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[pb.StreamInferResponse]:
        identity = peer_identity(context)

        async def one(req: pb.InferRequest | Undecodable) -> pb.StreamInferResponse:
            request_id = "" if isinstance(req, Undecodable) else req.id
            try:
                resp = await self._answer(req, identity, context.time_remaining())
                return pb.StreamInferResponse(id=request_id, response=resp)
            except RequestRefused as exc:
                return pb.StreamInferResponse(id=request_id, error_code=status(exc).value[0],
                                              error_message=str(exc), error_reason=exc.reason,
                                              error_field=exc.field)
            except Exception as exc:  # a bug costs this request an error, not the stream
                log.exception("stream request failed")
                return pb.StreamInferResponse(
                    id=request_id, error_code=grpc.StatusCode.INTERNAL.value[0],
                    error_message=f"{type(exc).__name__}: {exc}")

        async for reply in windowed_stream(request_iterator, one, self.holds):
            yield reply

    async def GetModelInfo(self, request: pb.ModelInfoRequest | Undecodable,
                           context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        c = self.card
        return pb.ModelInfo(name=c.name, version=c.version, input_dtype=c.input_dtype,
                            input_shape=[-1, *c.input_shape], classes=c.classes,
                            max_batch_size=self.batcher.max_batch_size, device=c.device,
                            capabilities=self.core.capabilities,
                            input_scale=c.input_scale or 0.0)
