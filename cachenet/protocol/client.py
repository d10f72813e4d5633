"""Clients for the cloud's services, and the one place gRPC errors become ours.

:func:`map_grpc_errors` turns a :class:`grpc.RpcError` into the matching
:class:`~cachenet.exceptions.CloudError`, with the server's structured details (its
reason and the field at fault, from the trailing metadata); every caller of the
cloud goes through it. :class:`CloudClient` (blocking) and :class:`AsyncCloudClient`
(asyncio, used by the edge agent) wrap the inference service's stubs;
:class:`GenerateClient` (blocking) the generation service's. What a server takes
beyond a plain request it declares (:meth:`AsyncCloudClient.capabilities`: uint8
pixel levels, the spooled field); a client asks, and never guesses from an error.
:func:`channel_options` gives the channels gRPC's own retry policy (one more try
on UNAVAILABLE, within the call's deadline) and round-robin balancing.

    with CloudClient("127.0.0.1:50051") as cloud:
        answer = cloud.infer(batch, timeout=0.5)
        answer.labels, answer.model_version, answer.timings

    with GenerateClient("127.0.0.1:50051") as cloud:
        out = cloud.generate(model="cifar", label=3, count=4, steps=50, policy="deepcache",
                             params={"interval": 3}, on_progress=print, timeout=60)
        out.images  # uint8, 4 x 3 x 32 x 32
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from cachenet.core import tensors
from cachenet.exceptions import (
    CloudError,
    CloudOverloaded,
    CloudRejected,
    CloudTimeout,
    CloudUnavailable,
    ConfigError,
)
from cachenet.protocol.v1 import generate_pb2 as gpb
from cachenet.protocol.v1 import generate_pb2_grpc as gpb_grpc
from cachenet.protocol.v1 import inference_pb2 as pb
from cachenet.protocol.v1 import inference_pb2_grpc as pb_grpc

_BY_CODE: dict[grpc.StatusCode, type[CloudError]] = {
    grpc.StatusCode.UNAVAILABLE: CloudUnavailable,
    grpc.StatusCode.CANCELLED: CloudUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: CloudTimeout,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CloudOverloaded,
    grpc.StatusCode.INVALID_ARGUMENT: CloudRejected,
    grpc.StatusCode.NOT_FOUND: CloudRejected,
    grpc.StatusCode.FAILED_PRECONDITION: CloudRejected,
    grpc.StatusCode.UNIMPLEMENTED: CloudRejected,
}

#: Channel options shared by the clients: messages up to 64 MiB, fast reconnects (gRPC
#: jitters its reconnect backoff by 20%, so a fleet does not reconnect in lockstep).
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 0),
]

#: The inference methods, as gRPC's service config names them.
INFER_METHOD = ("cachenet.v1.InferenceService", "Infer")
OIP_INFER_METHOD = ("inference.GRPCInferenceService", "ModelInfer")
#: gRPC's own retry policy for escalations: a call that fails UNAVAILABLE (a replica went
#: away under it; nothing ran) is tried once more, on another replica where the channel
#: balances, within the same deadline. Never CANCELLED (it may have run).
RETRY_POLICY = {"maxAttempts": 2, "initialBackoff": "0.005s", "maxBackoff": "0.05s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}

#: Trailing metadata a refusal's details travel in (``cloud_server.wire.abort``).
REASON_KEY, FIELD_KEY = "cachenet-reason", "cachenet-field"
#: Capabilities a server declares: float32 inputs may come as their uint8 pixel levels;
#: InferRequest.spooled is known (``ModelInfo.capabilities``; the OIP front end lists
#: them in ``ServerMetadata.extensions``, prefixed ``cachenet-``).
UINT8_LEVELS, SPOOLED = "uint8-levels", "spooled"


def channel_options(*, balanced: bool = False, retry: Sequence[tuple[str, str]] = ()
                    ) -> list[tuple[str, Any]]:
    """:data:`CHANNEL_OPTIONS`, with round-robin over every address the target resolves to
    (``balanced``) and :data:`RETRY_POLICY` for the methods ``retry`` names."""
    config: dict[str, Any] = {}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    if retry:
        config["methodConfig"] = [{"name": [{"service": s, "method": m} for s, m in retry],
                                   "retryPolicy": RETRY_POLICY}]
    options = [o for o in CHANNEL_OPTIONS if o[0] != "grpc.enable_retries"]
    options.append(("grpc.enable_retries", 1 if retry else 0))
    if config:
        options.append(("grpc.service_config", json.dumps(config)))
    return options


def to_cloud_error(exc: grpc.RpcError) -> CloudError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    try:
        meta = {str(k): str(v) for k, v in (exc.trailing_metadata() or ())}
    except Exception:  # no trailing metadata on this error (a local failure)
        meta = {}
    cls = _BY_CODE.get(code, CloudError)
    return cls(f"cloud answered {code.name}: {details}", code=code.name,
               reason=meta.get(REASON_KEY, "")[:200], field=meta.get(FIELD_KEY, "")[:200])


@contextmanager
def map_grpc_errors() -> Iterator[None]:
    """Re-raise any :class:`grpc.RpcError` inside the block as a :class:`CloudError`."""
    try:
        yield
    except grpc.RpcError as exc:
        raise to_cloud_error(exc) from exc


@dataclass
class CloudAnswer:
    id: str
    labels: np.ndarray
    confidences: np.ndarray
    logits: np.ndarray
    model_name: str
    model_version: str
    timings: dict[str, int]
    #: per input, what answered it when the cloud serves layer caches ("full" or
    #: "<site>:<kind>"); empty when it does not
    answered_by: list[str] = field(default_factory=list)


_ids = itertools.count()


def make_request(x: np.ndarray, *, request_id: str | None = None, model_name: str = "",
                 agent_id: str = "", cache_model_version: str = "",
                 spooled: bool = False) -> pb.InferRequest:
    dtype, shape, raw = tensors.encode(x)
    return pb.InferRequest(
        id=request_id or f"{os.getpid()}-{next(_ids)}", model_name=model_name,
        input=pb.Tensor(dtype=dtype, shape=shape, raw_data=raw), agent_id=agent_id,
        cache_model_version=cache_model_version, spooled=spooled)


def parse_response(resp: pb.InferResponse) -> CloudAnswer:
    t = resp.logits
    logits = tensors.decode(t.dtype, t.shape, t.raw_data)
    timings = {"queue_us": resp.timings.queue_us, "compute_us": resp.timings.compute_us,
               "total_us": resp.timings.total_us, "batch_size": resp.timings.batch_size,
               "macs": resp.timings.macs, "full_macs": resp.timings.full_macs}
    return CloudAnswer(resp.id, np.asarray(resp.labels, np.int64),
                       np.asarray(resp.confidences, np.float32), logits, resp.model_name,
                       resp.model_version, timings, list(resp.answered_by))


def open_channel(target: str, options: list | None = None,
                 credentials: grpc.ChannelCredentials | None = None, *, aio: bool = False
                 ) -> Any:
    """A channel to ``target``: TLS with ``credentials`` (:mod:`cachenet.protocol.tls`),
    else plaintext."""
    kind = grpc.aio if aio else grpc
    opts = options or CHANNEL_OPTIONS
    if credentials is not None:
        return kind.secure_channel(target, credentials, options=opts)
    return kind.insecure_channel(target, options=opts)


class CloudClient:
    """Blocking client for applications that call the cloud directly."""

    def __init__(self, target: str, *, options: list | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.channel = open_channel(target, options, credentials)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)

    def infer(self, x: np.ndarray, *, timeout: float | None = None, **fields: str) -> CloudAnswer:
        with map_grpc_errors():
            return parse_response(self.stub.Infer(make_request(x, **fields), timeout=timeout))

    def model_info(self, *, timeout: float | None = None) -> pb.ModelInfo:
        with map_grpc_errors():
            return self.stub.GetModelInfo(pb.ModelInfoRequest(), timeout=timeout)

    def wait_ready(self, timeout: float) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise CloudUnavailable(f"cloud not reachable within {timeout} s") from None

    def wait_serving(self, service: str = "", *, timeout: float) -> None:
        """Wait until standard health checking says ``service`` ("" is the whole server)
        is SERVING, watching rather than polling; raises :class:`CloudError` if it is
        not within ``timeout`` seconds."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        call = health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        try:
            with map_grpc_errors():
                for resp in call:
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
        finally:
            call.cancel()
        raise CloudUnavailable(f"health of '{service}' ended without SERVING")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCloudClient:
    """asyncio client; create it inside the running event loop."""

    def __init__(self, target: str, *, options: list | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.target = target
        self.channel = open_channel(target, options, credentials, aio=True)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)

    async def infer(self, x: np.ndarray, *, timeout: float | None = None,
                    **fields: Any) -> CloudAnswer:
        with map_grpc_errors():
            resp = await self.stub.Infer(make_request(x, **fields), timeout=timeout)
        return parse_response(resp)

    async def model_info(self, *, timeout: float | None = None) -> pb.ModelInfo:
        with map_grpc_errors():
            return await self.stub.GetModelInfo(pb.ModelInfoRequest(), timeout=timeout)

    async def capabilities(self, *, timeout: float | None = None) -> frozenset[str]:
        """What the server declares it takes beyond a plain request (:data:`UINT8_LEVELS`,
        :data:`SPOOLED`); raises :class:`CloudError` when it cannot be asked."""
        return frozenset((await self.model_info(timeout=timeout)).capabilities)

    async def close(self) -> None:
        await self.channel.close()


# --- generation ----------------------------------------------------------------------

#: A cache policy's parameter as it travels (``Param``): an int, a float or a string.
ParamValue = int | float | str


def to_param(value: ParamValue) -> gpb.Param:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"a policy parameter is an int, float or str, not {value!r}")
    if isinstance(value, int):
        return gpb.Param(int_value=value)
    if isinstance(value, float):
        return gpb.Param(float_value=value)
    return gpb.Param(string_value=value)


def from_param(p: gpb.Param) -> ParamValue | None:
    """The value a ``Param`` holds, or None when it holds none."""
    kind = p.WhichOneof("value")
    return None if kind is None else getattr(p, kind)


@dataclass
class Generated:
    """A generation's answer: the images and what the server spent on them."""

    id: str
    images: np.ndarray  # uint8, N x C x H x W
    model_name: str
    #: queue_us, compute_us, total_us, macs_per_image, macs_full_per_image, steps,
    #: batch_images (ints)
    #: and layers_skipped (the share of the layers' computation the step cache saved)
    timings: dict[str, float]


def make_generate_request(*, model: str = "", label: int | None = None, count: int = 1,
                          seed: int = 0, steps: int = 50, sampler: str = "ddim",
                          policy: str = "none", params: Mapping[str, ParamValue] | None = None,
                          guidance: float = 1.0, request_id: str | None = None
                          ) -> gpb.GenerateRequest:
    """The request; ConfigError naming a field whose value its wire type cannot carry
    (a negative seed, a label past int32). The server checks the rest."""
    req = gpb.GenerateRequest(id=request_id or f"{os.getpid()}-{next(_ids)}",
                              params={k: to_param(v) for k, v in (params or {}).items()})
    fields = {"model_name": model, "count": count, "seed": seed, "steps": steps,
              "sampler": sampler, "policy": policy, "guidance": guidance, "label": label}
    for name, value in fields.items():
        if value is None:
            continue
        try:
            setattr(req, name, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} cannot be {value!r}: {exc}") from None
    return req


def parse_generated(resp: gpb.GenerateResponse) -> Generated:
    r = resp.result
    images = tensors.decode(r.images.dtype, r.images.shape, r.images.raw_data)
    t = r.timings
    timings = {"queue_us": t.queue_us, "compute_us": t.compute_us, "total_us": t.total_us,
               "macs_per_image": t.macs_per_image, "macs_full_per_image": t.macs_full_per_image,
               "layers_skipped": t.layers_skipped, "steps": t.steps,
               "batch_images": t.batch_images}
    return Generated(resp.id, images, r.model_name, timings)


class GenerateClient:
    """Blocking client of the cloud's generation service."""

    def __init__(self, target: str, *, options: list | None = None) -> None:
        self.channel = grpc.insecure_channel(target, options=options or CHANNEL_OPTIONS)
        self.stub = gpb_grpc.GenerationServiceStub(self.channel)

    def generate(self, *, timeout: float | None = None,
                 on_progress: Callable[[int, int], None] | None = None,
                 **fields: object) -> Generated:
        """Images for the request :func:`make_generate_request` makes of ``fields``;
        ``on_progress(done, total)`` is called as each denoising step is reported."""
        call = self.stub.Generate(make_generate_request(**fields),  # type: ignore[arg-type]
                                  timeout=timeout)
        try:
            with map_grpc_errors():
                for resp in call:
                    if resp.HasField("result"):
                        return parse_generated(resp)
                    if on_progress is not None and resp.HasField("progress"):
                        on_progress(resp.progress.done, resp.progress.total)
        finally:
            call.cancel()  # a no-op once the call ended; else the server stops generating
        raise CloudError("the generation's stream ended without images")

    def info(self, *, timeout: float | None = None) -> gpb.GeneratorInfo:
        with map_grpc_errors():
            return self.stub.GetGeneratorInfo(gpb.GeneratorInfoRequest(), timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GenerateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
