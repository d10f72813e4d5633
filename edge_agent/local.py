"""The agent in the application's own process: the same cascade, escalation, audit and
stats as the daemon, without a socket in between.

::

    from edge_agent.local import LocalAgent

    with LocalAgent(bundle="bundles/cifar", cloud="cloud.example:50051") as agent:
        answer = agent.infer(frame)      # the daemon's reply, as a dict
        agent.stats()                    # the daemon's stats reply

It is the daemon (:class:`edge_agent.agent.EdgeAgent`) with its transport
replaced: the agent's event loop runs in a thread of its own (escalations, audits,
uploads, the control plane), and a call runs the request on the caller's own thread,
as the daemon's loop runs one it read, under the agent's lock; the reply comes back to
the caller instead of going out on a ZeroMQ socket, at once for an edge answer, from
the loop for an escalation. Calls may come from any thread. An edge answer costs ONNX
Runtime plus a few tens of microseconds (``python -m bench.micro``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import numpy as np

from cachenet.exceptions import ProtocolError
from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig, load_config

POLICIES = ("auto", "edge", "cloud")


class _Box:
    """Where a caller's answer lands: at once for an edge answer (no event is made), from
    the loop for an escalation (the caller then waits on ``ready``). Both sides look at it
    under the agent's lock, so the answer cannot slip between the look and the wait."""

    __slots__ = ("answer", "ready")

    def __init__(self) -> None:
        self.answer: dict[str, Any] | None = None
        self.ready: threading.Event | None = None


class _InProcess(EdgeAgent):
    """The daemon whose replies go into the caller's box."""

    def reply(self, envelope: list[Any], reply: dict[str, Any]) -> None:
        box: _Box = envelope[0]
        box.answer = reply
        if box.ready is not None:
            box.ready.set()


class LocalAgent:
    """An edge agent inside the calling process (see the module docstring)."""

    def __init__(self, config: AgentConfig | None = None, **settings: Any) -> None:
        config = config or load_config(**settings)
        config.bind = ""
        config.ready_file = None
        self.agent = _InProcess(config)
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None, "the agent is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def start(self) -> LocalAgent:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edge-agent",
                                        daemon=True)
        self._thread.start()
        try:
            self._call(self.agent.startup())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def _stop_loop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
        self._loop = self._thread = None

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._call(self.agent.shutdown())
            finally:
                self._stop_loop()

    def __enter__(self) -> LocalAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, x: np.ndarray, *, policy: str = "auto", deadline_ms: float | None = None
              ) -> dict[str, Any]:
        """Answer one input, as the daemon's ``infer`` would (the same reply fields)."""
        if policy not in POLICIES:
            raise ProtocolError(f"policy must be one of {', '.join(POLICIES)}")
        assert self._loop is not None, "the agent is not started"
        t0 = time.perf_counter_ns()
        header: dict[str, Any] = {"op": "infer", "id": next(self._ids), "policy": policy}
        if deadline_ms is not None:
            header["deadline_ms"] = float(deadline_ms)
        box = _Box()
        self.agent.infer([box], header, self.agent.one_input(np.asarray(x)), t0)
        if box.answer is None:  # escalated: the loop answers it
            with self.agent.lock:
                if box.answer is None:
                    box.ready = threading.Event()
            if box.ready is not None:
                box.ready.wait()
        assert box.answer is not None
        return box.answer

    def stats(self) -> dict[str, Any]:
        with self.agent.lock:
            return self.agent.stats_reply(None)
