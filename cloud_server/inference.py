"""The transport-neutral inference core: check an input, queue it in the batcher, answer.

Every protocol the cloud speaks is a thin front end over :class:`InferenceCore`:
:mod:`cloud_server.service` (``cachenet.v1``) and :mod:`cloud_server.oip` (the Open
Inference Protocol, KServe v2 / Triton). A front end parses its wire format into a
numpy array and hands :meth:`InferenceCore.answer` a function that does so; the core
counts the request, checks the array against the model (dtype, shape, batch size,
finiteness), runs it through the dynamic batcher and returns an :class:`Answer`, or
raises :class:`~cachenet.exceptions.RequestRefused` with the status to answer, its
reason and the field at fault. Adding a protocol is one new module that maps its
messages to and from these. :attr:`InferenceCore.capabilities` is what every front
end declares the server takes beyond a plain request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cachenet.core import tensors
from cachenet.core.gate import softmax
from cachenet.core.ids import check_agent_id
from cachenet.exceptions import ConfigError, ProtocolError, QueueFullError, RequestRefused
from cachenet.protocol.client import SPOOLED, UINT8_LEVELS
from cloud_server.batcher import DynamicBatcher

log = logging.getLogger(__name__)


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
class Answer:
    """The full model's answer to one request of N inputs."""

    logits: np.ndarray  # N x K float32
    labels: np.ndarray  # N int64
    confidences: np.ndarray  # N float32, the softmax probability of each label
    queue_us: int
    compute_us: int
    total_us: int
    batch_size: int
    #: with layer caches: per input what answered it, and the MACs spent / without caches
    answered_by: list[str] = field(default_factory=list)
    macs: int | None = None
    full_macs: int | None = None


def refusal(exc: Exception) -> RequestRefused:
    """``exc`` as the refusal to answer: a ProtocolError is INVALID_ARGUMENT, with its
    reason and field."""
    if isinstance(exc, RequestRefused):
        return exc
    return RequestRefused("INVALID_ARGUMENT", str(exc), reason=getattr(exc, "reason", "")
                          or "invalid", field=getattr(exc, "field", ""))


def agent_for(agent_id: str, identity: str | None) -> str:
    """The agent a request speaks for: the one it names, which must be an agent id
    (INVALID_ARGUMENT); with mutual TLS only the certificate's own (PERMISSION_DENIED
    for another; none named: the certificate's)."""
    if identity is not None and not agent_id:
        return identity
    if agent_id:
        try:
            check_agent_id(agent_id)
        except ConfigError as exc:
            raise RequestRefused("INVALID_ARGUMENT", str(exc), reason="agent_id",
                                 field="agent_id") from None
    if identity is not None and agent_id != identity:
        raise RequestRefused("PERMISSION_DENIED", f"this certificate is agent '{identity}'; "
                             f"the request says '{agent_id[:128]}'", reason="not_this_agent",
                             field="agent_id")
    return agent_id


class InferenceCore:
    def __init__(self, card: ModelCard, batcher: DynamicBatcher, *,
                 max_tensor_bytes: int = tensors.MAX_TENSOR_BYTES) -> None:
        self.card = card
        self.batcher = batcher
        self.max_tensor_bytes = max_tensor_bytes
        #: called with (agent id, inputs, full-model labels) for each answered escalation
        self.observer: Callable[[str, np.ndarray, np.ndarray], None] | None = None
        self.counts = {"received": 0, "ok": 0, "invalid": 0, "overloaded": 0, "deadline": 0,
                       "error": 0, "spooled": 0}
        self.ready = False  # accepting inference: set once serving, cleared on shutdown
        #: called with (outcome, answer or None, seconds) after each request: metrics
        self.listeners: list[Callable[[str, Answer | None, float], None]] = []

    def check_model(self, name: str, version: str = "") -> None:
        """NOT_FOUND unless ``name`` (empty: the default) and ``version`` are served."""
        if name not in ("", self.card.name):
            raise RequestRefused("NOT_FOUND", f"unknown model '{name[:128]}'; this server runs "
                                 f"'{self.card.name}'", reason="unknown_model",
                                 field="model_name")
        if version not in ("", self.card.version):
            raise RequestRefused("NOT_FOUND", f"model '{self.card.name}' has no version "
                                 f"'{version[:64]}'; it serves version '{self.card.version}'",
                                 reason="unknown_version", field="model_version")

    def check(self, x: np.ndarray) -> np.ndarray:
        """``x`` as the model takes it, or ProtocolError naming what is wrong."""
        # A camera's frame may come as its uint8 pixel levels: checked as it is, then
        # turned into the float32 it stands for (4x its bytes: only once it fits).
        levels = x.dtype == np.uint8 and self.card.input_scale is not None
        if x.dtype.name != self.card.input_dtype and not levels:
            raise ProtocolError(f"input dtype is {x.dtype.name}, the model takes "
                                f"{self.card.input_dtype}", reason="input_dtype",
                                field="input.dtype")
        if x.ndim != len(self.card.input_shape) + 1 or x.shape[1:] != self.card.input_shape:
            raise ProtocolError(f"input shape is {list(x.shape)}, the model takes "
                                f"[N, {', '.join(map(str, self.card.input_shape))}]",
                                reason="input_shape", field="input.shape")
        if not 1 <= len(x) <= self.batcher.max_batch_size:
            raise ProtocolError(f"batch of {len(x)} inputs; this server takes 1 to "
                                f"{self.batcher.max_batch_size}", reason="batch_size",
                                field="input.shape")
        if levels:
            x = tensors.from_levels(x, self.card.input_scale)  # type: ignore[arg-type]
        tensors.check_finite(x)
        return x

    @property
    def capabilities(self) -> list[str]:
        """What this server takes beyond a plain request (ModelInfo.capabilities)."""
        return [SPOOLED, *((UINT8_LEVELS,) if self.card.input_scale is not None else ())]

    def refuse(self, exc: Exception) -> RequestRefused:
        """Count a request a front end refused before it could reach :meth:`answer` (it
        does not decode, names a bad agent); the error to answer it with."""
        self.counts["received"] += 1
        self._done("invalid", None, time.perf_counter())
        return refusal(exc)

    def _done(self, outcome: str, answer: Answer | None, received: float) -> None:
        self.counts[outcome] += 1
        for listener in self.listeners:
            listener(outcome, answer, time.perf_counter() - received)

    async def answer(self, parse: Callable[[], np.ndarray], *, request_id: str = "",
                     agent_id: str = "", spooled: bool = False,
                     timeout: float | None = None) -> Answer:
        """Count the request, ``parse`` and check its input, run it, answer it."""
        received = time.perf_counter()
        self.counts["received"] += 1
        try:
            x = self.check(parse())
        except (ProtocolError, RequestRefused) as exc:
            self._done("invalid", None, received)
            raise refusal(exc) from None
        except Exception as exc:  # a bug reading it: this request fails, clearly, alone
            log.exception("reading request %s failed", request_id[:64])
            self._done("error", None, received)
            raise RequestRefused("INTERNAL", "cannot read the request: "
                                 f"{type(exc).__name__}", reason="internal") from None
        log.debug("queued request %s (%d inputs) from %s", request_id[:64], len(x),
                  agent_id or "-")
        try:
            result = await asyncio.wait_for(self.batcher.infer(x), timeout)
        except QueueFullError as exc:
            self._done("overloaded", None, received)
            raise RequestRefused("RESOURCE_EXHAUSTED", str(exc), reason="queue_full") from None
        except asyncio.TimeoutError:
            self._done("deadline", None, received)
            raise RequestRefused("DEADLINE_EXCEEDED", "deadline passed while the request was "
                                 "queued", reason="deadline") from None
        except Exception as exc:
            self._done("error", None, received)
            raise RequestRefused("INTERNAL", f"model failed: {exc}", reason="model_failed") \
                from None
        rows = result.logits  # an array, or the layer caches' rows (cloud_server.layered)
        logits = getattr(rows, "logits", rows).astype(np.float32, copy=False)
        unfit = np.flatnonzero(~np.isfinite(logits).all(1))
        if len(unfit):  # finite inputs can still overflow the model (3e38, say)
            self._done("invalid", None, received)
            raise RequestRefused("INVALID_ARGUMENT", f"the model's output for input(s) "
                                 f"{unfit[:8].tolist()} is not finite: their values lie "
                                 "outside what the model takes", reason="output_not_finite",
                                 field="input")
        labels = logits.argmax(1)
        if spooled:
            self.counts["spooled"] += 1  # answered by the agent while we were away
        if self.observer is not None and agent_id:
            self.observer(agent_id, x, labels)
        answer = Answer(
            logits=logits, labels=labels, confidences=softmax(logits).max(1),
            queue_us=result.queue_us, compute_us=result.compute_us,
            total_us=int((time.perf_counter() - received) * 1e6),
            batch_size=result.batch_size, answered_by=list(getattr(rows, "by", [])),
            macs=int(rows.macs.sum()) if hasattr(rows, "macs") else None,
            full_macs=rows.full_macs * len(rows) if hasattr(rows, "macs") else None)
        self._done("ok", answer, received)
        return answer
