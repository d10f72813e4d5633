"""The emulated WAN itself: an asyncio TCP proxy that delivers each chunk at its due time.

Each accepted client gets its own connection to the upstream and two
directions, "up" (client to upstream) and "down" (upstream to client). In each
direction a pump reads a chunk, stamps it with the time it is due at the far
end, and queues it; a writer sleeps until that time and writes it. Stamping at
read time is what makes delay, jitter and bandwidth compose: the due time is
``max(previous due time, now + delay + jitter) + serialisation time``, so a
chunk never overtakes the one before it and a slow link queues data as a real
one would. Writers sleep on timers or wait on an event: no polling, no busy CPU.

End of stream travels like data: a half-close (EOF) is forwarded after the data
queued before it, which is what request/response protocols rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from dataclasses import dataclass

from cachenet.exceptions import ConfigError
from cachenet.sim.wan.profile import LinkProfile

log = logging.getLogger(__name__)

_MIN_CHUNK, _MAX_CHUNK = 1024, 64 * 1024
#: A capped link reads about this much time's worth of bytes at once, so that
#: data leaves in a stream of small chunks rather than one late burst.
_CHUNK_SECONDS = 0.01
#: Chunks a direction may hold before its pump stops reading, pushing back on
#: the sender through TCP flow control instead of buffering without bound.
_QUEUE_CHUNKS = 1024


@dataclass(frozen=True)
class _Chunk:
    due: float  # loop.time() at which it may be written
    data: bytes  # b"" marks end of stream


_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class WanProxy:
    """Forward TCP connections to ``upstream`` through an emulated link.

    Runs in one event loop; call every method from that loop's thread (use
    :class:`~cachenet.sim.wan.thread.ProxyThread` from other threads).
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        profile: LinkProfile,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._upstream = upstream
        self._listen = (listen_host, listen_port)
        self._profile = LinkProfile()  # replaced by configure() below
        self._rng = random.Random()
        self._flowing = asyncio.Event()  # set while not stalled; stalled writers wait on it
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._closing = False
        self._bytes = {"up": 0, "down": 0}  # delivered, by direction
        self._connections = 0
        self.configure(profile)

    @property
    def profile(self) -> LinkProfile:
        return self._profile

    @property
    def bytes_up(self) -> int:
        """Bytes delivered to the upstream so far (client to server)."""
        return self._bytes["up"]

    @property
    def bytes_down(self) -> int:
        """Bytes delivered to clients so far (server to client)."""
        return self._bytes["down"]

    @property
    def connections(self) -> int:
        """Client connections accepted so far, including ones reset by a cut link."""
        return self._connections

    async def start(self) -> int:
        """Listen, and return the bound port (useful with ``listen_port=0``)."""
        if self._server is not None:
            raise RuntimeError("WanProxy already started")
        self._closing = False
        self._server = await asyncio.start_server(self._handle, *self._listen)
        port: int = self._server.sockets[0].getsockname()[1]
        log.info("WAN proxy on port %d to %s: %s", port, self._upstream, self._profile)
        return port

    async def stop(self) -> None:
        """Stop listening and reset every connection; held or queued data is discarded."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def configure(self, profile: LinkProfile) -> None:
        """Change the link now: it applies to chunks read from here on.

        Clearing ``stall`` releases the data held so far (its due time has
        passed, so it goes at once); setting ``drop`` resets current connections.
        """
        if not isinstance(profile, LinkProfile):
            raise ConfigError(f"expected a LinkProfile, got {type(profile).__name__}")
        if profile.seed is not None and profile.seed != self._profile.seed:
            self._rng = random.Random(profile.seed)
        self._profile = profile
        log.info("WAN link: %s", profile)
        if profile.stall:
            self._flowing.clear()
        else:
            self._flowing.set()
        if profile.drop:
            for link in list(self._links):
                link.abort()

    # -- inside the loop ---------------------------------------------------------------------

    def _read_size(self) -> int:
        bw = self._profile.bandwidth_kbps
        if bw is None:
            return _MAX_CHUNK
        return max(_MIN_CHUNK, min(_MAX_CHUNK, int(bw * 1000 / 8 * _CHUNK_SECONDS)))

    def _due(self, now: float, previous: float, size: int) -> float:
        """When a chunk of ``size`` bytes read at ``now`` reaches the far end."""
        p = self._profile
        delay = p.delay_ms
        if p.jitter_ms:
            delay += self._rng.uniform(-p.jitter_ms, p.jitter_ms)
        if p.stall_rate and self._rng.random() < p.stall_rate:
            delay += p.stall_ms  # a transient stall: this chunk, and those behind it, wait
        due = max(previous, now + max(0.0, delay) / 1000.0)
        if p.bandwidth_kbps is not None:
            due += size * 8 / (p.bandwidth_kbps * 1000.0)
        return due

    async def _until_deliverable(self, due: float) -> None:
        """Sleep until ``due`` (never wake early) and then while the link is stalled."""
        loop = asyncio.get_running_loop()
        while True:
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif self._profile.stall:
                await self._flowing.wait()
            else:
                return

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._connections += 1
        peer = client_w.get_extra_info("peername")
        try:
            if self._profile.drop or self._closing:
                log.debug("link cut: resetting new connection from %s", peer)
                _reset(client_w)
                return
            try:
                up_r, up_w = await asyncio.open_connection(*self._upstream)
            except OSError as exc:
                log.warning("cannot reach upstream %s: %s", self._upstream, exc)
                _reset(client_w)
                return
            link = _Link(self, (client_r, client_w), (up_r, up_w))
            if self._profile.drop or self._closing:  # cut while we were connecting
                link.abort()
            self._links.add(link)
            try:
                await link.run()
            finally:
                self._links.discard(link)
        except asyncio.CancelledError:
            # Only stop() cancels us. Return rather than re-raise: Python 3.11's start_server
            # callback calls task.exception() and logs an error for a cancelled task.
            _reset(client_w)
        except Exception:  # a bug here must not leave a half-open client behind
            log.exception("proxying a connection from %s failed", peer)
            _reset(client_w)
        finally:
            self._handlers.discard(task)


class _Link:
    """One proxied connection: two directions, each a pump task and a writer task."""

    def __init__(self, proxy: WanProxy, client: _Stream, upstream: _Stream) -> None:
        (client_r, client_w), (up_r, up_w) = client, upstream
        self._proxy = proxy
        self._writers = (client_w, up_w)
        for writer in self._writers:
            # The proxy decides when bytes leave; Nagle's algorithm must not add a delay.
            _setsockopt(writer, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up: asyncio.Queue[_Chunk] = asyncio.Queue(_QUEUE_CHUNKS)
        down: asyncio.Queue[_Chunk] = asyncio.Queue(_QUEUE_CHUNKS)
        self._tasks = [
            asyncio.create_task(self._pump(client_r, up)),
            asyncio.create_task(self._deliver("up", up_w, up)),
            asyncio.create_task(self._pump(up_r, down)),
            asyncio.create_task(self._deliver("down", client_w, down)),
        ]

    async def run(self) -> None:
        """Until both directions have delivered their EOF, or either side fails."""
        try:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
            if errors := [t.exception() for t in done if not t.cancelled() and t.exception()]:
                log.debug("connection failed: %r", errors[0])
                self.abort()  # a reset on one side becomes a reset on the other
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for writer in self._writers:
                writer.close()

    def abort(self) -> None:
        """Reset both sides at once, as a cut cable would."""
        for writer in self._writers:
            _reset(writer)
        for task in self._tasks:
            task.cancel()

    async def _pump(self, reader: asyncio.StreamReader, queue: asyncio.Queue[_Chunk]) -> None:
        loop = asyncio.get_running_loop()
        due = 0.0
        while True:
            data = await reader.read(self._proxy._read_size())
            due = self._proxy._due(loop.time(), due, len(data))
            await queue.put(_Chunk(due, data))
            if not data:
                return

    async def _deliver(
        self, direction: str, writer: asyncio.StreamWriter, queue: asyncio.Queue[_Chunk]
    ) -> None:
        while True:
            chunk = await queue.get()
            await self._proxy._until_deliverable(chunk.due)
            if not chunk.data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            self._proxy._bytes[direction] += len(chunk.data)
            writer.write(chunk.data)
            await writer.drain()


def _setsockopt(writer: asyncio.StreamWriter, level: int, option: int, value: int | bytes) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing left to set
            sock.setsockopt(level, option, value)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (linger 0) so the peer sees a reset, not an orderly end."""
    _setsockopt(writer, socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
