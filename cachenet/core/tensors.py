"""Tensors on the wire: dtype + shape + raw little-endian bytes (KServe v2 / Triton style).

Shared by the gRPC protocol and the edge's ZeroMQ API. Decoding checks every
field and raises :class:`~cachenet.exceptions.ProtocolError` with a message
that says what is wrong. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cachenet.exceptions import ProtocolError

#: dtypes the wire accepts, by name.
DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int32", "int64", "bool")
#: The largest tensor accepted by default: 64 MiB.
MAX_TENSOR_BYTES = 64 << 20
MAX_DIMS = 8
_WIRE_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}


def excerpt(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: what an error may echo of a request."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def encode(arr: np.ndarray) -> tuple[str, list[int], bytes]:
    """(dtype name, shape, little-endian bytes) of ``arr``."""
    arr = np.asarray(arr)
    if arr.dtype.name not in DTYPES:
        raise ProtocolError(f"dtype {arr.dtype} cannot be sent; supported: {', '.join(DTYPES)}")
    le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return arr.dtype.name, list(arr.shape), np.ascontiguousarray(le).tobytes()


def check_shape(shape: object, itemsize: int, max_bytes: int = MAX_TENSOR_BYTES) -> list[int]:
    """``shape`` as a list of dimensions, checked before anything is multiplied out: a
    list of 1 to MAX_DIMS positive integers whose tensor fits ``max_bytes``."""
    try:
        items = None if isinstance(shape, str | bytes | dict) else list(shape)  # type: ignore[call-overload]
    except TypeError:  # a number, None: not a list at all
        items = None
    if items is None or not all(type(d) is int or (isinstance(d, np.integer)
                                                   and not isinstance(d, bool)) for d in items):
        raise ProtocolError(f"shape must be a list of integers, got {excerpt(shape)}")
    if not 1 <= len(items) <= MAX_DIMS:
        raise ProtocolError(f"shape must have 1 to {MAX_DIMS} dimensions, got {len(items)}")
    dims = [int(d) for d in items]
    if any(d < 1 for d in dims):
        raise ProtocolError(f"shape must have positive dimensions, got {excerpt(dims)}")
    if any(d > max_bytes for d in dims):
        raise ProtocolError(f"tensor of shape {excerpt(dims)} is over the limit of {max_bytes} "
                            "bytes")
    expected = math.prod(dims) * itemsize
    if expected > max_bytes:
        raise ProtocolError(f"tensor of shape {dims} is {expected} bytes, over the limit of "
                            f"{max_bytes} bytes")
    return dims


def decode(dtype: str, shape: Sequence[int], data: bytes | memoryview, *,
           max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """Rebuild a tensor from its wire form, without copying ``data``."""
    wire_dtype = _WIRE_DTYPES.get(dtype) if isinstance(dtype, str) else None
    if wire_dtype is None:
        raise ProtocolError(f"unsupported dtype {excerpt(dtype)}; supported: "
                            f"{', '.join(DTYPES)}")
    dims = check_shape(shape, wire_dtype.itemsize, max_bytes)
    expected = math.prod(dims) * wire_dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(f"tensor data is {len(data)} bytes, but shape {dims} of {dtype} "
                            f"needs {expected}")
    return np.frombuffer(data, dtype=wire_dtype).reshape(dims)


def check_finite(arr: np.ndarray) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ProtocolError("tensor contains NaN or infinite values")


def to_levels(x: np.ndarray, scale: float | None) -> np.ndarray | None:
    """``x`` as the uint8 pixel levels it was made of (``levels * scale``, as a camera
    frame becomes model input), or None where that would lose anything: an input that
    travels as its levels is 4x smaller than float32 and comes back bit for bit."""
    if scale is None or not scale > 0 or x.dtype != np.float32 or not x.size:
        return None
    s = np.float32(scale)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf fail the checks below
        levels = np.rint(x / s)
    if not np.isfinite(levels).all():
        return None
    if levels.min() < 0 or levels.max() > 255:
        return None
    u8 = levels.astype(np.uint8)
    return u8 if np.array_equal(u8.astype(np.float32) * s, x) else None


def from_levels(u8: np.ndarray, scale: float) -> np.ndarray:
    """The float32 input that :func:`to_levels` gave the levels of."""
    return u8.astype(np.float32) * np.float32(scale)


def input_scale(spec: dict) -> float | None:
    """The pixel scale of a manifest's float32 input (``normalization.scale``), if any."""
    norm = spec.get("normalization")
    scale = norm.get("scale") if isinstance(norm, dict) else None
    ok = (spec.get("dtype") == "float32" and isinstance(scale, int | float)
          and not isinstance(scale, bool) and 0 < scale <= 1)
    return float(scale) if ok else None
