"""What the gRPC front ends share on the wire: lenient parsing, unknown fields, refusals.

A request whose bytes do not parse reaches the service as :class:`Undecodable` (so it
is answered INVALID_ARGUMENT saying so, not failed by gRPC as UNKNOWN), and fields a
message does not define are refused by number rather than silently dropped.
:func:`abort` answers a :class:`~cachenet.exceptions.RequestRefused` with its status,
and its reason and field in the trailing metadata, where
:func:`cachenet.protocol.client.to_cloud_error` reads them back.
:func:`windowed_stream` answers a bidirectional stream with bounded backpressure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf import message as pb_message
from google.protobuf import unknown_fields

from cachenet.exceptions import ProtocolError, RequestRefused
from cachenet.protocol.client import FIELD_KEY, REASON_KEY

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass
class Undecodable:
    """Stands in for a request whose bytes do not parse, so it gets INVALID_ARGUMENT."""

    reason: str


def status(exc: RequestRefused) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)


def details(exc: RequestRefused) -> tuple[tuple[str, str], ...]:
    """A refusal's reason and field, as trailing metadata (printable ASCII only)."""
    return tuple((k, v.encode("ascii", "replace").decode()[:200])
                 for k, v in ((REASON_KEY, exc.reason), (FIELD_KEY, exc.field)) if v)


async def abort(context: grpc.aio.ServicerContext, exc: RequestRefused) -> None:
    """End the call with ``exc``'s status, message and details (raises, as abort does)."""
    await context.abort(status(exc), str(exc), trailing_metadata=details(exc))


def lenient_parser(cls: type[pb_message.Message]):
    def parse(data: bytes) -> pb_message.Message | Undecodable:
        try:
            return cls.FromString(data)
        except pb_message.DecodeError as exc:
            return Undecodable(f"request does not decode as {cls.DESCRIPTOR.full_name}: {exc}")
    return parse


def reject_unknown_fields(msg: pb_message.Message, where: str, *, speaks: str = "cachenet.v1"
                          ) -> None:
    unknown = unknown_fields.UnknownFieldSet(msg)
    if len(unknown):
        numbers = sorted({f.field_number for f in unknown})
        raise ProtocolError(f"{where} has unknown field number(s) {numbers}; this server "
                            f"speaks {speaks}", reason="unknown_field", field=where)
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:  # a map: its message values
            items = [(f"{where}.{fd.name}[{k!r:.40}]", v) for k, v in value.items()
                     if isinstance(v, pb_message.Message)]
        elif fd.is_repeated:
            items = [(f"{where}.{fd.name}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(f"{where}.{fd.name}", value)]
        for path, item in items:
            reject_unknown_fields(item, path, speaks=speaks)


@dataclass
class StreamHolds:
    """Requests a stream front end has read and not yet written back: at most
    ``window`` per stream; ``now`` across streams, ``max`` the most one stream held."""

    window: int
    now: int = 0
    max: int = 0


async def windowed_stream(requests: AsyncIterator[Req], answer: Callable[[Req], Awaitable[Resp]],
                          holds: StreamHolds) -> AsyncIterator[Resp]:
    """Answer each of ``requests`` (``answer`` never raises: it turns errors into replies)
    concurrently, yielding replies as they are ready, in any order.

    Backpressure: at most ``holds.window`` requests of this stream are read and not yet
    written back. A client that stops reading its answers stops the writes (gRPC flow
    control), then the reads: memory stays bounded.
    """
    out: asyncio.Queue[Resp | None] = asyncio.Queue()
    pending: set[asyncio.Task] = set()
    window = asyncio.Semaphore(holds.window)
    held = [0]  # this stream's share of ``holds.now``

    async def one(request: Req) -> None:
        await out.put(await answer(request))

    async def reader() -> None:
        async for request in requests:
            await window.acquire()
            held[0] += 1
            holds.now += 1
            holds.max = max(holds.max, held[0])
            task = asyncio.create_task(one(request))
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
            holds.now -= 1
            window.release()
    finally:
        holds.now -= held[0]
        read_task.cancel()
        for task in list(pending):
            task.cancel()
