"""The Open Inference Protocol (KServe v2, Triton's gRPC API): tensors and a client.

The messages (``inference.GRPCInferenceService``) are generated from
``proto/inference/grpc_predict_v2.proto`` into :mod:`cachenet.protocol.oip`. Here:

* :data:`DATATYPES`: the protocol's datatype strings and the numpy dtypes they are;
* :func:`input_array` / :func:`output_tensor`: a tensor of a request (raw contents or
  typed ``contents``) as a checked numpy array, and an array as an output tensor;
* :class:`OIPClient` and :class:`AsyncOIPClient`: escalate to any OIP server (cachenet's
  cloud, Triton, KServe, MLServer) with the interface and errors of
  :class:`~cachenet.protocol.client.CloudClient` and ``AsyncCloudClient``: an answer is a
  :class:`~cachenet.protocol.client.CloudAnswer`.

Numpy and gRPC only: the edge imports it.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np

from cachenet.core import tensors
from cachenet.core.gate import softmax
from cachenet.exceptions import CloudError, ProtocolError
from cachenet.protocol.client import CHANNEL_OPTIONS, CloudAnswer, map_grpc_errors, open_channel
from cachenet.protocol.oip import grpc_predict_v2_pb2 as pb
from cachenet.protocol.oip import grpc_predict_v2_pb2_grpc as pb_grpc

#: The protocol's datatypes cachenet's tensors carry (:data:`cachenet.core.tensors.DTYPES`),
#: and their numpy dtypes; the rest (BYTES, UINT16, ...) are refused by name.
DATATYPES: dict[str, np.dtype] = {name: np.dtype(dt) for name, dt in {
    "BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64"}.items()}
DATATYPE_OF = {dt.name: name for name, dt in DATATYPES.items()}
#: Where each datatype's values go in ``InferTensorContents`` when not sent raw.
CONTENTS_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "INT8": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents"}
#: The outputs cachenet's cloud answers with: the full model's logits, each input's
#: label (argmax) and its softmax probability.
OUTPUTS = ("logits", "label", "confidence")


def datatype(name: str) -> np.dtype:
    if name not in DATATYPES:
        raise ProtocolError(f"datatype {tensors.excerpt(name)} is not one this server takes "
                            f"({', '.join(DATATYPES)})")
    return DATATYPES[name]


def input_array(t: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, *,
                max_bytes: int = tensors.MAX_TENSOR_BYTES) -> np.ndarray:
    """The array ``t`` carries: ``raw`` (its entry of ``raw_input_contents``) or its
    typed ``contents``; checked against its datatype, shape and ``max_bytes`` (the shape
    before anything is multiplied out; integer values against their type's range)."""
    dtype = datatype(t.datatype)
    if raw is None:
        if t.datatype == "FP16":
            raise ProtocolError(f"input '{t.name[:64]}': FP16 travels only as raw contents")
        dims = tensors.check_shape(list(t.shape), dtype.itemsize, max_bytes)
        values = getattr(t.contents, CONTENTS_FIELD[t.datatype])
        count = int(np.prod(dims))
        if len(values) != count:
            raise ProtocolError(f"input '{t.name[:64]}' has {len(values)} values in "
                                f"{CONTENTS_FIELD[t.datatype]}; its shape {dims} needs {count}")
        wide = np.asarray(values)
        if dtype.kind in "iu" and len(wide):
            info = np.iinfo(dtype)
            if wide.min() < info.min or wide.max() > info.max:
                raise ProtocolError(f"input '{t.name[:64]}' has values outside {t.datatype}'s "
                                    f"range [{info.min}, {info.max}]")
        raw = wide.astype(dtype).tobytes()
    return tensors.decode(dtype.name, list(t.shape), raw, max_bytes=max_bytes)


def output_tensor(name: str, a: np.ndarray) -> tuple[pb.ModelInferResponse.InferOutputTensor,
                                                     bytes]:
    """``a`` as output ``name``: the tensor's description and its raw contents."""
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return (pb.ModelInferResponse.InferOutputTensor(
        name=name, datatype=DATATYPE_OF[a.dtype.name], shape=list(a.shape)), a.tobytes())


def output_array(resp: pb.ModelInferResponse, name: str) -> np.ndarray:
    """Output ``name`` of ``resp`` as an array, raw or typed contents alike (the other
    outputs are not read: a server may answer with more, of any datatype)."""
    raw = list(resp.raw_output_contents)
    if raw and len(raw) != len(resp.outputs):
        raise ProtocolError(f"response has {len(resp.outputs)} outputs and {len(raw)} raw "
                            "contents")
    for i, t in enumerate(resp.outputs):
        if t.name == name:
            return input_array(t, raw[i] if raw else None)  # the same rules both ways
    raise ProtocolError(f"the response has no output '{name[:64]}' (it has "
                        f"{[o.name[:64] for o in resp.outputs[:8]]})")


def parameter(value: str | bool | int | float) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def infer_request(x: np.ndarray, *, model_name: str, model_version: str = "",
                  input_name: str = "input", output_name: str = "logits",
                  request_id: str = "", agent_id: str = "",
                  spooled: bool = False) -> pb.ModelInferRequest:
    """A ModelInfer request of ``x``, sent raw, asking for output ``output_name`` only;
    cachenet's extras as parameters."""
    if x.dtype.name not in DATATYPE_OF:
        raise ProtocolError(f"cannot send a {x.dtype} tensor over the Open Inference Protocol")
    x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    params = {"agent_id": parameter(agent_id)} if agent_id else {}
    if spooled:
        params["spooled"] = parameter(True)
    return pb.ModelInferRequest(
        model_name=model_name, model_version=model_version, id=request_id,
        parameters=params, inputs=[pb.ModelInferRequest.InferInputTensor(
            name=input_name, datatype=DATATYPE_OF[x.dtype.name], shape=list(x.shape))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=output_name)],
        raw_input_contents=[x.tobytes()])


def parse_answer(resp: pb.ModelInferResponse, *, logits_name: str = "logits") -> CloudAnswer:
    """A :class:`CloudAnswer` from any OIP server's response: its logits, N x K; labels
    and confidences derived from them; cachenet's timings where the server sends them."""
    logits = np.asarray(output_array(resp, logits_name), np.float32)
    if logits.ndim != 2:
        raise ProtocolError(f"output '{logits_name[:64]}' has shape {list(logits.shape)}, "
                            "not N x K")
    tensors.check_finite(logits)
    timings = {k: int(resp.parameters[k].int64_param)
               for k in ("queue_us", "compute_us", "total_us", "batch_size")
               if k in resp.parameters}
    by = resp.parameters["answered_by"].string_param if "answered_by" in resp.parameters else ""
    return CloudAnswer(id=resp.id, labels=logits.argmax(1).astype(np.int64),
                       confidences=softmax(logits).max(1).astype(np.float32), logits=logits,
                       model_name=resp.model_name, model_version=resp.model_version,
                       timings=timings, answered_by=by.split(",") if by else [])


def usable_answer(resp: pb.ModelInferResponse, logits_name: str, started: float) -> CloudAnswer:
    """:func:`parse_answer`, a response that does not parse being the server's failure
    (:class:`CloudError`), as any failed call to it is. A server that sends no timings
    (any but cachenet's) gets the call's: total time, a batch of its own."""
    try:
        answer = parse_answer(resp, logits_name=logits_name)
    except ProtocolError as exc:
        raise CloudError(f"the server's answer cannot be used: {exc}") from None
    answer.timings.setdefault("total_us", int((time.perf_counter() - started) * 1e6))
    answer.timings.setdefault("batch_size", 1)
    return answer


class _OIPTarget:
    """A model on an OIP server, a channel to it, and the requests it takes."""

    aio = False

    def __init__(self, target: str, model_name: str, *, model_version: str = "",
                 input_name: str = "input", logits_name: str = "logits",
                 options: list[tuple[str, Any]] | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.target, self.model_name, self.model_version = target, model_name, model_version
        self.input_name, self.logits_name = input_name, logits_name
        self.channel = open_channel(target, options or CHANNEL_OPTIONS, credentials,
                                    aio=self.aio)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def request(self, x: np.ndarray, request_id: str, agent_id: str,
                spooled: bool) -> pb.ModelInferRequest:
        return infer_request(x, model_name=self.model_name, model_version=self.model_version,
                             input_name=self.input_name, output_name=self.logits_name,
                             request_id=request_id, agent_id=agent_id, spooled=spooled)


class OIPClient(_OIPTarget):
    """Escalations to an Open Inference Protocol server, as :class:`CloudClient` does them
    to cachenet's own: ``infer(x, ...) -> CloudAnswer``; errors are cachenet's."""

    def infer(self, x: np.ndarray, *, timeout: float | None = None, request_id: str = "",
              agent_id: str = "", spooled: bool = False, **_: Any) -> CloudAnswer:
        request = self.request(x, request_id, agent_id, spooled)
        started = time.perf_counter()
        with map_grpc_errors():
            resp = self.stub.ModelInfer(request, timeout=timeout)
        return usable_answer(resp, self.logits_name, started)

    def ready(self, timeout: float | None = None) -> bool:
        with map_grpc_errors():
            return self.stub.ModelReady(pb.ModelReadyRequest(
                name=self.model_name, version=self.model_version), timeout=timeout).ready

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> OIPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncOIPClient(_OIPTarget):
    """asyncio :class:`OIPClient`; create it inside the running event loop."""

    aio = True

    async def infer(self, x: np.ndarray, *, timeout: float | None = None, request_id: str = "",
                    agent_id: str = "", spooled: bool = False, **_: Any) -> CloudAnswer:
        request = self.request(x, request_id, agent_id, spooled)
        started = time.perf_counter()
        with map_grpc_errors():
            resp = await self.stub.ModelInfer(request, timeout=timeout)
        return usable_answer(resp, self.logits_name, started)

    async def capabilities(self, *, timeout: float | None = None) -> frozenset[str]:
        """What the server declares beyond the protocol: its ``cachenet-`` extensions
        (``spooled`` on cachenet's own front end; nothing on another engine)."""
        with map_grpc_errors():
            meta = await self.stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=timeout)
        return frozenset(e[len("cachenet-"):] for e in meta.extensions
                         if e.startswith("cachenet-"))

    async def close(self) -> None:
        await self.channel.close()
