"""A :class:`WanProxy` on its own event loop in a daemon thread, for synchronous callers.

Tests and demos use blocking sockets; they cannot host an event loop in their
own thread while they block on a ``recv``. This runs the proxy's loop beside
them and hands every call across threads with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from types import TracebackType
from typing import Any

from cachenet.sim.wan.profile import LinkProfile
from cachenet.sim.wan.proxy import WanProxy

_TIMEOUT_S = 10.0


class ProxyThread:
    """Run a :class:`WanProxy` in a background thread; ``with ProxyThread(...) as p:`` works too.

    ``kw`` goes to :class:`WanProxy` (``listen_host``, ``listen_port``).
    """

    def __init__(self, upstream: tuple[str, int], profile: LinkProfile, **kw: Any) -> None:
        self._proxy = WanProxy(upstream, profile, **kw)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on; only known once started."""
        if self._port is None:
            raise RuntimeError("ProxyThread not started")
        return self._port

    @property
    def proxy(self) -> WanProxy:
        """The proxy itself, for its counters; call its methods only through this class."""
        return self._proxy

    @property
    def profile(self) -> LinkProfile:
        return self._proxy.profile

    @property
    def bytes_up(self) -> int:
        return self._proxy.bytes_up

    @property
    def bytes_down(self) -> int:
        return self._proxy.bytes_down

    @property
    def connections(self) -> int:
        return self._proxy.connections

    def start(self) -> int:
        """Start the thread and block until the proxy listens; return its port."""
        if self._thread is not None:
            raise RuntimeError("ProxyThread already started")
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="wan-proxy", daemon=True
        )
        self._thread.start()
        self._port = ready.result(timeout=_TIMEOUT_S)
        return self._port

    def configure(self, profile: LinkProfile) -> None:
        """Change the link; when this returns, the new profile is in force."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            self._proxy.configure(profile)  # no loop running: nothing to race with
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def apply() -> None:
            try:
                self._proxy.configure(profile)
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        loop.call_soon_threadsafe(apply)
        # Waiting makes the change ordered with whatever the caller sends next.
        done.result(timeout=_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the proxy, reset its connections and end the thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._proxy.stop(), loop).result(timeout=_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_TIMEOUT_S)

    def __enter__(self) -> ProxyThread:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, ready: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                port = loop.run_until_complete(self._proxy.start())
            except Exception as exc:
                ready.set_exception(exc)
                return
            self._loop = loop  # published before the port, so configure() finds it
            ready.set_result(port)
            loop.run_forever()
        finally:
            loop.close()
