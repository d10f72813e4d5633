"""The control plane: agents register and subscribe; the cloud pushes their current bundle.

For each subscribed agent the service watches the model store
(:class:`cachenet.fleet.store.ModelStore`, the agent's own version or the fleet's)
and streams a bundle whenever the current version differs from the one the
agent last had, so an agent that reconnects after a gap gets what it missed.
Acks and stats reports are kept per agent and logged.

State is kept for at most ``max_agents`` agents. When a new agent arrives and the
table is full, the agent seen least recently that holds no subscription is forgotten
(here and in the specialiser); only when every known agent is subscribed is the new
one refused with RESOURCE_EXHAUSTED. The specialiser learns only from agents the
control plane knows, so inference under invented agent ids keeps nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from cachenet.core.ids import check_agent_id
from cachenet.exceptions import ConfigError
from cachenet.fleet.store import ModelStore
from cachenet.protocol.push import iter_push
from cachenet.protocol.tls import peer_identity
from cachenet.protocol.v1 import control_pb2 as pb
from cachenet.protocol.v1 import control_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from cloud_server.specializer import Specializer

log = logging.getLogger(__name__)

#: Agents the cloud keeps state for (registrations, reports); a new one beyond is refused.
MAX_AGENTS = 10_000
#: Acks kept (the latest); entries of a map an agent sends, and their keys' length.
MAX_ACKS, MAX_ENTRIES, MAX_KEY = 10_000, 1024, 128


class ControlService(pb_grpc.ControlServiceServicer):
    def __init__(self, store: ModelStore, *, tokens: set[str] | None = None,
                 poll_s: float = 0.5, stats_interval_s: int = 30,
                 max_agents: int = MAX_AGENTS) -> None:
        self.store = store
        self.tokens = tokens
        self.poll_s = poll_s
        self.stats_interval_s = stats_interval_s
        self.max_agents = max_agents
        self.agents: dict[str, dict[str, Any]] = {}
        self.acks: deque[dict[str, Any]] = deque(maxlen=MAX_ACKS)  # the latest, for the log
        self.reports: dict[str, dict[str, Any]] = {}
        self.seen: OrderedDict[str, float] = OrderedDict()  # every known agent, oldest first
        self.subscribed: Counter[str] = Counter()  # open Subscribe streams per agent
        self.evicted = 0
        self._push_ids = itertools.count(1)
        self.specializer: Specializer | None = None  # set once it has loaded

    async def _check(self, agent_id: str, token: str, context: grpc.aio.ServicerContext) -> None:
        """A valid agent id, the right token, and room for the agent: else the call ends
        with INVALID_ARGUMENT, UNAUTHENTICATED or RESOURCE_EXHAUSTED."""
        if not agent_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id is required")
        try:
            check_agent_id(agent_id)
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self.tokens is not None and token not in self.tokens:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"bad token for {agent_id}")
        identity = peer_identity(context)
        if identity is not None and identity != agent_id:  # mutual TLS: only as itself
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"this certificate is agent '{identity}', not '{agent_id}'")
        if agent_id not in self.seen and len(self.seen) >= self.max_agents \
                and not self._make_room():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the cloud keeps state for at most {self.max_agents} agents, "
                                "all of them subscribed")
        self.seen[agent_id] = time.time()
        self.seen.move_to_end(agent_id)

    def _make_room(self) -> bool:
        """Forget the agent seen least recently that is not subscribed; False if none."""
        for agent in self.seen:
            if not self.subscribed[agent]:
                self.forget(agent)
                return True
        return False

    def forget(self, agent_id: str) -> None:
        """Drop what the cloud keeps for ``agent_id``; it starts afresh if it calls again."""
        self.seen.pop(agent_id, None)
        self.agents.pop(agent_id, None)
        self.reports.pop(agent_id, None)
        self.subscribed.pop(agent_id, None)
        if self.specializer is not None:
            self.specializer.forget(agent_id)
        self.evicted += 1
        log.info("forgot agent %s (least recently seen, %d agents kept)", agent_id,
                 len(self.seen))

    def knows(self, agent_id: str) -> bool:
        return agent_id in self.seen

    def observe(self, agent_id: str, x: np.ndarray, labels: np.ndarray) -> None:
        """An escalation's input and the full model's labels, for the specialiser: kept
        only for an agent the control plane knows (registered, subscribed or reporting)."""
        if self.specializer is not None and agent_id in self.seen:
            self.specializer.observe(agent_id, x, labels)

    @staticmethod
    async def _bounded(fields: dict[str, Any], context: grpc.aio.ServicerContext) -> None:
        """Maps an agent sends are kept: each at most MAX_ENTRIES entries of short keys."""
        for name, value in fields.items():
            if len(value) > MAX_ENTRIES or any(len(str(k)) > MAX_KEY for k in value):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"{name} has more than {MAX_ENTRIES} entries or a key "
                                    f"longer than {MAX_KEY} characters")

    async def Register(self, request: pb.RegisterRequest,
                       context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        await self._check(request.agent_id, request.token, context)
        await self._bounded({"device": request.device}, context)
        self.agents[request.agent_id] = {
            "device": dict(request.device), "onnxruntime": request.onnxruntime_version,
            "bundle": f"{request.bundle_name}:{request.bundle_version}", "since": time.time()}
        log.info("agent %s registered with %s", request.agent_id,
                 self.agents[request.agent_id]["bundle"])
        return pb.RegisterResponse(stats_interval_s=self.stats_interval_s)

    async def Subscribe(self, request: pb.SubscribeRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PushMessage]:
        await self._check(request.agent_id, request.token, context)
        self.subscribed[request.agent_id] += 1
        try:
            async for msg in self._pushes(request.agent_id, request.current_version):
                yield msg
        finally:
            self.subscribed[request.agent_id] -= 1
            if self.subscribed[request.agent_id] <= 0:
                self.subscribed.pop(request.agent_id, None)

    async def _pushes(self, agent_id: str, have: str) -> AsyncIterator[pb.PushMessage]:
        """The agent's current bundle whenever it differs from the one it has."""
        while True:
            current = await asyncio.to_thread(self.store.current, agent=agent_id)
            if current is not None and current.version != have:
                push_id = f"push-{next(self._push_ids)}"
                log.info("pushing %s version %s to %s (%s)", current.name, current.version,
                         agent_id, push_id)
                messages = await asyncio.to_thread(lambda p=current.path, i=push_id: list(
                    iter_push(Path(p), i, signing_key=self.store.signing_key)))
                for msg in messages:
                    yield msg
                have = current.version
            await asyncio.sleep(self.poll_s)

    async def Ack(self, request: pb.AckRequest,
                  context: grpc.aio.ServicerContext) -> pb.AckResponse:
        await self._check(request.agent_id, request.token, context)
        entry = {"agent_id": request.agent_id, "push_id": request.push_id,
                 "version": request.version, "applied": request.applied,
                 "reason": request.reason, "time": time.time()}
        self.acks.append(entry)
        (log.info if request.applied else log.warning)(
            "agent %s %s %s%s", request.agent_id,
            "applied" if request.applied else "rejected", request.version,
            f": {request.reason}" if request.reason else "")
        if self.specializer is not None:
            self.specializer.acknowledged(request.agent_id, request.version, request.applied)
        return pb.AckResponse()

    async def ReportStats(self, request: pb.StatsReport,
                          context: grpc.aio.ServicerContext) -> pb.StatsAck:
        await self._check(request.agent_id, request.token, context)
        await self._bounded({"class_histogram": request.class_histogram,
                             "telemetry": request.telemetry}, context)
        self.reports[request.agent_id] = {
            "version": request.bundle_version, "requests": request.requests,
            "hits": request.hits, "escalations": request.escalations,
            "fallbacks": request.fallbacks, "classes": dict(request.class_histogram),
            "telemetry": dict(request.telemetry), "time": time.time()}
        log.info("agent %s: %d requests, %d hits, %d escalations, %d fallbacks",
                 request.agent_id, request.requests, request.hits, request.escalations,
                 request.fallbacks)
        if self.specializer is not None:
            self.specializer.report(request.agent_id, version=request.bundle_version,
                                    requests=request.requests,
                                    escalations=request.escalations + request.fallbacks,
                                    histogram=dict(request.class_histogram))
        return pb.StatsAck()
