"""The edge's local API on ZeroMQ: multipart messages, a JSON header plus raw tensor bytes.

A client (DEALER or REQ) sends ``[b"", header, tensor]`` and receives
``[b"", header]``; the ROUTER side sees the client's identity in front.

Request headers::

    {"op": "infer", "id": "42", "dtype": "float32", "shape": [1, 3, 32, 32],
     "policy": "auto",                 # optional: "auto" | "edge" | "cloud"
     "gate": {"score": "entropy", "threshold": 0.5}}  # optional: this request's gate
    {"op": "stats", "id": "43"}        {"op": "ping", "id": "44"}

``infer`` takes one input (C x H x W or 1 x C x H x W); its bytes are read in
place, without a copy. ``deadline_ms`` (optional) shortens the escalation
deadline; ``gate`` replaces the model's calibrated gate for this request (for
baselines such as a fixed threshold). Replies always carry ``id`` and ``ok``; an error
reply has ``error: {"type", "message"}``, the message quoting at most an excerpt of what
was sent. Unknown header fields are an error. Replies are strict JSON: no NaN or Infinity.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cachenet.core import tensors
from cachenet.core.gate import SCORES, Gate
from cachenet.exceptions import ProtocolError

log = logging.getLogger(__name__)

OPS = ("infer", "stats", "ping")
POLICIES = ("auto", "edge", "cloud")
_FIELDS = {"infer": {"op", "id", "dtype", "shape", "policy", "deadline_ms", "gate"},
           "stats": {"op", "id"}, "ping": {"op", "id"}}
MAX_HEADER_BYTES = 4096
#: Replies as compact strict JSON; one encoder, made once (json.dumps with options makes
#: a new one per call, a cost on every request).
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def split_envelope(frames: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(routing envelope, body) of a message received on a ROUTER socket."""
    if len(frames) >= 2 and len(frames[1]) == 0:
        return list(frames[:2]), list(frames[2:])
    return list(frames[:1]), list(frames[1:])


def parse_header(frame: Any) -> dict[str, Any]:
    raw = frame.bytes if hasattr(frame, "bytes") else bytes(frame)
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {len(raw)} bytes, over {MAX_HEADER_BYTES}")
    try:
        header = json.loads(raw.decode())
    except (ValueError, RecursionError) as exc:  # JSON and Unicode errors are ValueErrors
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    try:
        return _check_header(header)
    except ProtocolError as exc:  # the reply still names the request, where it can
        rid = header.get("id")
        exc.request_id = rid if isinstance(rid, str | int) and not isinstance(rid, bool) \
            else None  # type: ignore[attr-defined]
        raise


def _check_header(header: dict[str, Any]) -> dict[str, Any]:
    op = header.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    unknown = sorted(set(header) - _FIELDS[op])
    if unknown:
        raise ProtocolError(f"unknown header field(s) {unknown} for op '{op}'")
    if "id" in header and (not isinstance(header["id"], str | int)
                           or isinstance(header["id"], bool)):
        raise ProtocolError("id must be a string or an integer")
    if "deadline_ms" in header:
        d = header["deadline_ms"]
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d < 1e9:
            raise ProtocolError(f"deadline_ms must be a positive number of milliseconds, "
                                f"got {d!r}")
    if "gate" in header:
        header["gate"] = _parse_gate(header["gate"])
    return header


def _parse_gate(gate: Any) -> Gate:
    if not isinstance(gate, dict) or set(gate) != {"score", "threshold"}:
        raise ProtocolError("gate must be {\"score\": ..., \"threshold\": ...}")
    t = gate["threshold"]
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise ProtocolError(f"gate threshold must be a number, got {t!r}")
    if not isinstance(gate["score"], str) or gate["score"] not in SCORES:
        raise ProtocolError(f"gate score must be one of {', '.join(SCORES)}, got "
                            f"{tensors.excerpt(gate['score'])}")
    return Gate(gate["score"], float(t))


def parse_request(body: Sequence[Any]) -> tuple[dict[str, Any], np.ndarray | None]:
    """Header and (for ``infer``) the input tensor, viewing the frame's buffer. A
    ProtocolError carries the request's id (``request_id``) once the header has one."""
    if not body:
        raise ProtocolError("empty message: expected a header frame")
    header = parse_header(body[0])
    try:
        return header, _parse_data(header, body)
    except ProtocolError as exc:
        exc.request_id = header.get("id")  # type: ignore[attr-defined]
        raise


def _parse_data(header: dict[str, Any], body: Sequence[Any]) -> np.ndarray | None:
    if header["op"] != "infer":
        if len(body) != 1:
            raise ProtocolError(f"op '{header['op']}' takes no data frames, got {len(body) - 1}")
        return None
    if len(body) != 2:
        raise ProtocolError(f"infer takes exactly one data frame, got {len(body) - 1}")
    if header.get("policy", "auto") not in POLICIES:
        raise ProtocolError(f"policy must be one of {', '.join(POLICIES)}")
    for key in ("dtype", "shape"):
        if key not in header:
            raise ProtocolError(f"infer header lacks '{key}'")
    frame = body[1]
    data = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
    return tensors.decode(header["dtype"], header["shape"], data)


def encode_request(op: str, request_id: str, x: np.ndarray | None = None,
                   **extra: Any) -> list[Any]:
    header: dict[str, Any] = {"op": op, "id": request_id, **extra}
    if x is None:
        return [b"", json.dumps(header).encode()]
    x = np.ascontiguousarray(x)
    header.update(dtype=x.dtype.name, shape=list(x.shape))
    return [b"", json.dumps(header).encode(), x]


def encode_reply(envelope: list[Any], reply: dict[str, Any]) -> list[Any]:
    """The reply as strict JSON (no NaN or Infinity tokens, which strict parsers
    refuse); a reply that holds one becomes an error reply, so the caller still gets an
    answer."""
    try:
        body = _encode(reply)
    except ValueError:
        log.error("reply to %r held a non-finite number; answered as an error",
                  reply.get("id"))
        body = _encode(error_reply(reply.get("id"), "InternalError",
                                   "the answer held a non-finite number"))
    return [*envelope, body.encode()]


def _no_constant(token: str) -> Any:
    raise ProtocolError(f"reply is not strict JSON: it holds {token}")


def decode_reply(frame: bytes) -> dict[str, Any]:
    """A reply, parsed as strict JSON (what :func:`encode_reply` writes)."""
    return json.loads(frame, parse_constant=_no_constant)


def error_reply(request_id: Any, kind: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"type": kind, "message": message}}
