"""The Open Inference Protocol's front end (KServe v2 gRPC, with Triton's ModelStreamInfer).

``inference.GRPCInferenceService`` over the same core as ``cachenet.v1``
(:mod:`cloud_server.inference`): a request's one input, ``input`` (FP32, or UINT8
pixel levels where the bundle says how to scale them), raw or in typed contents,
becomes an array the core checks, batches and answers; the answer goes back as up to
three outputs, ``logits`` (FP32, N x K), ``label`` (INT64, N) and ``confidence`` (FP32,
N), raw. cachenet's extras ride in parameters: ``agent_id`` and ``spooled`` on the
request; ``queue_us``, ``compute_us``, ``total_us``, ``batch_size`` (and, with layer
caches, ``answered_by``) on the response. Errors carry the same status codes and
messages as ``cachenet.v1``; on the stream an error answers that request alone.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from importlib import metadata

import grpc
import numpy as np

from cachenet.exceptions import ProtocolError, RequestRefused
from cachenet.protocol import openinference as oi
from cachenet.protocol.client import SPOOLED
from cachenet.protocol.oip import grpc_predict_v2_pb2 as pb
from cachenet.protocol.tls import peer_identity
from cloud_server.inference import Answer, InferenceCore, agent_for
from cloud_server.wire import (
    StreamHolds,
    Undecodable,
    abort,
    lenient_parser,
    reject_unknown_fields,
    windowed_stream,
)

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SPEAKS = "the Open Inference Protocol (inference.GRPCInferenceService)"
INPUT = "input"
#: Parameters a request may carry: at most this many, keys this long.
MAX_PARAMETERS, MAX_KEY = 64, 128


def _parameter(params, key: str, kind: str, default):
    if key not in params:
        return default
    value = params[key]
    if value.WhichOneof("parameter_choice") != kind:
        raise ProtocolError(f"parameter '{key}' must be a {kind}, got "
                            f"{value.WhichOneof('parameter_choice') or 'nothing'}")
    return getattr(value, kind)


class OIPService:
    """The handlers of ``inference.GRPCInferenceService``; see :func:`add_to_server`."""

    def __init__(self, core: InferenceCore, *, stream_window: int = 256) -> None:
        self.core = core
        self.card = core.card
        self.holds = StreamHolds(stream_window)

    # -- health and metadata --------------------------------------------------------
    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest | Undecodable,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        await self._metadata_check(request, context)
        return pb.ModelReadyResponse(ready=self.core.ready)

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        try:
            version = metadata.version("cachenet")
        except metadata.PackageNotFoundError:  # run from a source tree, not installed
            version = "unknown"
        # The spooled parameter is cachenet's extension of the protocol: declared, so that
        # a client sends it only where it is known.
        return pb.ServerMetadataResponse(name="cachenet", version=version,
                                         extensions=[f"cachenet-{SPOOLED}"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest | Undecodable,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        await self._metadata_check(request, context)
        c = self.card
        tm = pb.ModelMetadataResponse.TensorMetadata
        inputs = [tm(name=INPUT, datatype=oi.DATATYPE_OF[c.input_dtype],
                     shape=[-1, *c.input_shape])]
        return pb.ModelMetadataResponse(
            name=c.name, versions=[c.version], platform="pytorch", inputs=inputs,
            outputs=[tm(name="logits", datatype="FP32", shape=[-1, len(c.classes)]),
                     tm(name="label", datatype="INT64", shape=[-1]),
                     tm(name="confidence", datatype="FP32", shape=[-1])])

    async def _metadata_check(self, request, context: grpc.aio.ServicerContext) -> None:
        try:
            if isinstance(request, Undecodable):
                raise RequestRefused("INVALID_ARGUMENT", request.reason, reason="undecodable")
            self.core.check_model(request.name, request.version)
        except RequestRefused as exc:
            await abort(context, exc)

    # -- inference ------------------------------------------------------------------
    def _parse(self, request: pb.ModelInferRequest) -> np.ndarray:
        reject_unknown_fields(request, "ModelInferRequest", speaks=SPEAKS)
        self.core.check_model(request.model_name, request.model_version)
        if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
            names = [t.name[:64] for t in request.inputs[:4]]
            raise ProtocolError(f"the model takes one input, '{INPUT}'; the request has "
                                f"{len(request.inputs)}: {names}")
        raw = list(request.raw_input_contents)
        if len(raw) > 1 or (raw and request.inputs[0].HasField("contents")):
            raise ProtocolError(f"raw_input_contents has {len(raw)} entries for one input "
                                "(or the input carries contents as well)")
        names = [out.name for out in request.outputs]
        for name in names:
            if name not in oi.OUTPUTS:
                raise ProtocolError(f"unknown output '{name[:64]}'; this model answers "
                                    f"{', '.join(oi.OUTPUTS)}")
        if len(set(names)) != len(names):
            raise ProtocolError(f"an output is requested twice: {names[:8]}")
        return oi.input_array(request.inputs[0], raw[0] if raw else None,
                              max_bytes=self.core.max_tensor_bytes)

    def _extras(self, request: pb.ModelInferRequest, identity: str | None) -> tuple[str, bool]:
        params = request.parameters
        if len(params) > MAX_PARAMETERS or any(len(k) > MAX_KEY for k in params):
            raise ProtocolError(f"at most {MAX_PARAMETERS} parameters, keys of at most "
                                f"{MAX_KEY} characters")
        agent = _parameter(params, "agent_id", "string_param", "")
        return agent_for(agent, identity), _parameter(params, "spooled", "bool_param", False)

    async def _answer(self, request: pb.ModelInferRequest | Undecodable, identity: str | None,
                      timeout: float | None) -> pb.ModelInferResponse:
        try:
            if isinstance(request, Undecodable):
                raise RequestRefused("INVALID_ARGUMENT", request.reason, reason="undecodable")
            agent, spooled = self._extras(request, identity)
        except (RequestRefused, ProtocolError) as exc:
            raise self.core.refuse(exc) from None
        answer = await self.core.answer(lambda: self._parse(request), request_id=request.id,
                                        agent_id=agent, spooled=spooled, timeout=timeout)
        return self.response(request, answer)

    def response(self, request: pb.ModelInferRequest, a: Answer) -> pb.ModelInferResponse:
        wanted = [o.name for o in request.outputs] or list(oi.OUTPUTS)
        arrays = {"logits": a.logits, "label": a.labels.astype(np.int64),
                  "confidence": a.confidences.astype(np.float32)}
        outputs, raw = zip(*(oi.output_tensor(n, arrays[n]) for n in wanted), strict=True)
        params = {k: oi.parameter(int(v)) for k, v in (
            ("queue_us", a.queue_us), ("compute_us", a.compute_us), ("total_us", a.total_us),
            ("batch_size", a.batch_size))}
        if a.answered_by:
            params["answered_by"] = oi.parameter(",".join(a.answered_by))
        return pb.ModelInferResponse(model_name=self.card.name, model_version=self.card.version,
                                     id=request.id, parameters=params, outputs=list(outputs),
                                     raw_output_contents=list(raw))

    async def ModelInfer(self, request: pb.ModelInferRequest | Undecodable,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        try:
            return await self._answer(request, peer_identity(context), context.time_remaining())
        except RequestRefused as exc:
            await abort(context, exc)
            raise AssertionError("unreachable: abort raises") from None

    async def ModelStreamInfer(self, request_iterator: AsyncIterator, context
                               ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        identity = peer_identity(context)

        async def one(req: pb.ModelInferRequest | Undecodable) -> pb.ModelStreamInferResponse:
            try:
                return pb.ModelStreamInferResponse(
                    infer_response=await self._answer(req, identity, context.time_remaining()))
            except RequestRefused as exc:
                message = f"{exc.code}: {exc}"
            except Exception as exc:  # a bug costs this request an error, not the stream
                log.exception("stream request failed")
                message = f"INTERNAL: {type(exc).__name__}: {exc}"
            request_id = "" if isinstance(req, Undecodable) else req.id
            return pb.ModelStreamInferResponse(error_message=message,
                                               infer_response=pb.ModelInferResponse(id=request_id))

        async for reply in windowed_stream(request_iterator, one, self.holds):
            yield reply


def add_to_server(service: OIPService, server: grpc.aio.Server) -> None:
    """Register ``service``'s handlers, parsing requests leniently (a request that does not
    decode is answered INVALID_ARGUMENT, not UNKNOWN)."""
    def unary(fn, request_cls, response_cls):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=lenient_parser(request_cls),
            response_serializer=response_cls.SerializeToString)

    handlers = {
        "ServerLive": unary(service.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": unary(service.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": unary(service.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": unary(service.ServerMetadata, pb.ServerMetadataRequest,
                                pb.ServerMetadataResponse),
        "ModelMetadata": unary(service.ModelMetadata, pb.ModelMetadataRequest,
                               pb.ModelMetadataResponse),
        "ModelInfer": unary(service.ModelInfer, pb.ModelInferRequest, pb.ModelInferResponse),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            service.ModelStreamInfer, request_deserializer=lenient_parser(pb.ModelInferRequest),
            response_serializer=pb.ModelStreamInferResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                          handlers),))
