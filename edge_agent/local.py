"""The agent in the application's own process: the same cascade, escalation, audit and
stats as the daemon, without a socket in between.

::

    from edge_agent.local import LocalAgent

    with LocalAgent(bundle="bundles/cifar", cloud="cloud.example:50051") as agent:
        answer = agent.infer(frame)      # the daemon's reply, as a dict
        agent.stats()                    # the daemon's stats reply

It is the daemon (:class:`edge_agent.agent.EdgeAgent`) with its transport
replaced: replies go to the caller instead of a ZeroMQ socket, and the calling
thread does the receiving thread's work (it waits for its own escalation and
hands back finished audits). Calls are serialised by a lock: one request at a
time, from any thread. An edge answer costs ONNX Runtime plus a few tens of
microseconds (``bench/micro.py``).
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np

from cachenet.exceptions import InputSpecError, ProtocolError
from edge_agent.agent import POLL_MS, EdgeAgent
from edge_agent.config import AgentConfig, load_config

POLICIES = ("auto", "edge", "cloud")


class _InProcess(EdgeAgent):
    """The daemon whose replies go into the caller's box."""

    def reply(self, envelope: list[Any], reply: dict[str, Any]) -> None:
        envelope.append(reply)


class LocalAgent:
    """An edge agent inside the calling process (see the module docstring)."""

    def __init__(self, config: AgentConfig | None = None, **settings: Any) -> None:
        config = config or load_config(**settings)
        config.bind = ""
        config.ready_file = None
        self.agent = _InProcess(config)
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._started = False

    def start(self) -> LocalAgent:
        self.agent.startup()
        self._started = True
        return self

    def close(self) -> None:
        if self._started:
            with self._lock:
                self.agent.shutdown()
            self._started = False

    def __enter__(self) -> LocalAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pump(self, timeout_ms: int) -> None:
        """Deliver what the escalation loop finished (answers and audits)."""
        rx = self.agent._wake_rx
        if rx is not None and rx.poll(timeout_ms):
            self.agent.deliver_escalations()

    def infer(self, x: np.ndarray, *, policy: str = "auto", deadline_ms: float | None = None
              ) -> dict[str, Any]:
        """Answer one input, as the daemon's ``infer`` would (the same reply fields)."""
        if policy not in POLICIES:
            raise ProtocolError(f"policy must be one of {', '.join(POLICIES)}")
        with self._lock:
            t0 = time.perf_counter_ns()
            agent = self.agent
            self._pump(0)
            batch = agent.model.check_input(np.asarray(x))  # type: ignore[union-attr]
            if len(batch) != 1:
                raise InputSpecError(f"infer takes one input, got {len(batch)}")
            header: dict[str, Any] = {"op": "infer", "id": next(self._ids), "policy": policy}
            if deadline_ms is not None:
                header["deadline_ms"] = float(deadline_ms)
            box: list[dict[str, Any]] = []
            agent.infer(box, header, batch, t0)  # type: ignore[arg-type]
            while not box:  # escalated: this thread receives, as the daemon's would
                self._pump(POLL_MS)
            return box[0]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._pump(0)
            return self.agent.stats_reply(None)
