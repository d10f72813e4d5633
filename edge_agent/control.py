"""The agent's side of the control plane: register, receive pushes, apply, acknowledge.

Runs as a task on the agent's escalation loop. It subscribes with the bundle
version it runs; each push is checked chunk by chunk and as a whole
(:class:`cachenet.push.PushAssembler`), installed into a new versioned folder
(:func:`cachenet.push.install`), loaded, warmed up and canary-checked off the
request path, and swapped in (:class:`edge_agent.reload.Reloader`); the cloud
hears ``applied`` or ``rejected`` with the reason. Stats go up every
``stats_interval_s``. A lost connection is retried with backoff; on
reconnecting the agent says what it runs, so it gets what it missed.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from cachenet.client import CHANNEL_OPTIONS
from cachenet.exceptions import CachenetError
from cachenet.push import PushAssembler, install
from cachenet.v1 import control_pb2 as pb
from cachenet.v1 import control_pb2_grpc as pb_grpc
from edge_agent.stats import telemetry

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent

log = logging.getLogger(__name__)


class ControlClient:
    def __init__(self, agent: EdgeAgent, target: str) -> None:
        self.agent = agent
        self.config = agent.config
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.ControlServiceStub(self.channel)
        bundle = self.config.bundle
        self.root = self.config.state_dir or (Path(bundle).parent / ".pushed" if bundle
                                              else Path(".cachenet-agent"))
        self.stats_interval_s = 30
        self.received: str | None = None  # the last version pushed (applied or rejected)
        self._clean_staging()

    def _clean_staging(self) -> None:
        """Remove half-installed pushes an earlier run left when it was killed."""
        if self.root.is_dir():
            for stale in self.root.glob(".incoming-*"):
                log.info("removing %s, left by an interrupted install", stale)
                shutil.rmtree(stale, ignore_errors=True)

    def _version(self) -> str:
        return self.agent.model.version if self.agent.model else ""

    def _subscribe_version(self) -> str:
        """The version to subscribe with: the last one pushed to this agent, so that
        switching locally among held models does not make the cloud push it again."""
        return self.received or self._version()

    async def register(self) -> None:
        import onnxruntime

        model = self.agent.model
        reply = await self.stub.Register(pb.RegisterRequest(
            agent_id=self.config.agent_id, token=self.config.token,
            device={"hostname": socket.gethostname(), "machine": platform.machine(),
                    "python": platform.python_version()},
            onnxruntime_version=onnxruntime.__version__,
            bundle_name=model.manifest.name if model else "", bundle_version=self._version()),
            timeout=10)
        self.stats_interval_s = max(1, reply.stats_interval_s or 30)

    async def apply(self, header: pb.BundleHeader, files: dict[str, bytes]) -> str | None:
        """Install and swap in a push; the reason it was rejected, or None."""
        try:
            current = self.agent.model
            protect = (current.manifest.root,) if current else ()
            path = await asyncio.to_thread(install, self.root, header, files,
                                           keep=self.config.keep_bundles, protect=protect)
        except CachenetError as exc:
            return f"{type(exc).__name__}: {exc}"
        return await asyncio.to_thread(
            self.agent.reloader.load_and_swap, path, self.agent.model,
            precision=self.config.precision, threads=self.config.threads)

    async def ack(self, push_id: str, version: str, reason: str | None) -> None:
        await self.stub.Ack(pb.AckRequest(
            agent_id=self.config.agent_id, token=self.config.token, push_id=push_id,
            version=version, applied=reason is None, reason=reason or ""), timeout=10)

    async def subscribe(self) -> None:
        assembler = PushAssembler()
        stream = self.stub.Subscribe(pb.SubscribeRequest(
            agent_id=self.config.agent_id, token=self.config.token,
            current_version=self._subscribe_version()))
        async for msg in stream:
            try:
                done = assembler.feed(msg)
            except CachenetError as exc:
                push_id = msg.WhichOneof("kind") and getattr(msg, msg.WhichOneof("kind")).push_id
                log.error("push %s rejected: %s", push_id, exc)
                await self.ack(push_id or "", "", f"{type(exc).__name__}: {exc}")
                assembler = PushAssembler()
                continue
            if done is not None:
                header, files = done
                reason = await self.apply(header, files)
                self.received = header.version
                await self.ack(header.push_id, header.version, reason)

    async def report_stats(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            snap = self.agent.stats.snapshot()
            try:
                await self.stub.ReportStats(pb.StatsReport(
                    agent_id=self.config.agent_id, token=self.config.token,
                    bundle_version=self._version(), requests=snap["requests"],
                    hits=snap["hits"], escalations=snap["escalations"],
                    fallbacks=snap["fallbacks"], class_histogram=snap["recent_classes"],
                    telemetry={k: float(v) for k, v in telemetry().items()
                               if isinstance(v, int | float)}),
                    timeout=10)
            except grpc.RpcError as exc:
                log.debug("stats report failed: %s", exc)

    async def run(self) -> None:
        """Register, subscribe and report until cancelled, reconnecting with backoff."""
        backoff = 0.5
        while True:
            try:
                await self.register()
                reporter = asyncio.create_task(self.report_stats())
                try:
                    backoff = 0.5
                    await self.subscribe()
                finally:
                    reporter.cancel()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("the cloud serves no control plane (no --store): pushes are off")
                    return
                log.info("control plane unavailable (%s); retrying in %.1f s",
                         code.name if code else exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        await self.channel.close()
