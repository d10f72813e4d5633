"""The agent's side of the control plane: register, receive pushes, apply, acknowledge.

Runs as a task on the agent's loop. It subscribes with the bundle
version it runs; each push is checked chunk by chunk and as a whole
(:class:`cachenet.protocol.push.PushAssembler`), installed into a new versioned
folder confined to the state directory (:func:`cachenet.core.install.install`),
loaded, checked against its manifest, warmed up and canary-checked off the
request path, and swapped in (:class:`edge_agent.reload.Reloader`); the cloud
hears ``applied`` or ``rejected`` with the reason. Stats go up every
``stats_interval_s``.

Nothing a push does stops the updates: any failure while receiving, installing
or loading one (a hostile version, a disk error, a bug) is logged, acknowledged
as rejected with its reason, and the subscription goes on; a failure of the
connection itself is retried with a growing, jittered backoff (a fleet that lost
its cloud does not come back in lockstep), and on reconnecting the agent says
what it runs, so it gets what it missed. :attr:`ControlClient.state` says where
the control plane stands; the agent's ``stats`` reply carries it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from cachenet.core.backoff import Backoff
from cachenet.core.install import clean_staging, discard, install
from cachenet.exceptions import CachenetError
from cachenet.protocol.client import CHANNEL_OPTIONS, open_channel
from cachenet.protocol.push import PushAssembler
from cachenet.protocol.v1 import control_pb2 as pb
from cachenet.protocol.v1 import control_pb2_grpc as pb_grpc
from edge_agent.stats import telemetry

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent

log = logging.getLogger(__name__)

#: States of the control plane, in ``stats``.
CONNECTING, SUBSCRIBED, RETRYING, OFF = "connecting", "subscribed", "retrying", "off"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:500]}"


class ControlClient:
    def __init__(self, agent: EdgeAgent, target: str) -> None:
        self.agent = agent
        self.config = agent.config
        self.channel = open_channel(target, CHANNEL_OPTIONS, agent.credentials, aio=True)
        self.stub = pb_grpc.ControlServiceStub(self.channel)
        bundle = self.config.bundle
        self.root = Path(self.config.state_dir or (Path(bundle).parent / ".pushed" if bundle
                                                   else Path(".cachenet-agent")))
        self.stats_interval_s = 30
        self.received: str | None = None  # the last version pushed (applied or rejected)
        self.state = CONNECTING
        self.counts = {"received": 0, "applied": 0, "rejected": 0, "reconnects": 0}
        self.last_error: str | None = None
        self.last_push: dict[str, Any] | None = None
        clean_staging(self.root)

    def _version(self) -> str:
        return self.agent.model.version if self.agent.model else ""

    def _subscribe_version(self) -> str:
        """The version to subscribe with: the last one pushed to this agent, so that
        switching locally among held models does not make the cloud push it again."""
        return self.received or self._version()

    def snapshot(self) -> dict[str, Any]:
        """The control plane's state for the agent's ``stats`` reply."""
        return {"state": self.state, "state_dir": str(self.root), **self.counts,
                "last_error": self.last_error, "last_push": self.last_push}

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
        """Install and swap in a push; the reason it was rejected, or None. Never raises:
        whatever goes wrong (the disk, the bundle, a bug) is the push's rejection."""
        try:
            engine = self.agent.engine
            if engine is not None and header.version in engine.retired_versions:
                return (f"version {header.version} was retired on this device after its "
                        "audit broke the target")
            self.agent.trust.check_push(header.manifest_json, self.agent.model.manifest.data)
            protect = self._in_use()
            path = await asyncio.to_thread(install, self.root, header.version, files,
                                           header.manifest_json,
                                           keep=self.config.keep_bundles, protect=protect,
                                           sources=protect)  # what a head's push leaves out
            reason = await asyncio.to_thread(
                self.agent.reloader.load_and_swap, path, self.agent.model,
                precision=self.config.precision, threads=self.config.threads)
            if reason is not None:  # installed but cannot serve: it does not stay
                await asyncio.to_thread(discard, self.root, path, protect=self._in_use())
            else:
                self.agent.trust.accepted(json.loads(header.manifest_json))
            return reason
        except CachenetError as exc:  # the push's own fault: _settle logs it
            return _reason(exc)
        except Exception as exc:  # a bug of ours: the traceback, and the push is refused
            log.exception("installing push %s failed", header.push_id[:64])
            return _reason(exc)

    def _in_use(self) -> tuple[Path, ...]:
        """Folders a push may never replace or prune: the configured bundle and every
        model the agent holds (general, partitions, the active one)."""
        held = self.agent.models.held() if self.agent.models is not None else []
        models = [*held, self.agent.model] if self.agent.model is not None else held
        bundle = (Path(self.config.bundle),) if self.config.bundle else ()
        return (*bundle, *(m.manifest.root for m in models))

    async def ack(self, push_id: str, version: str, reason: str | None) -> None:
        await self.stub.Ack(pb.AckRequest(
            agent_id=self.config.agent_id, token=self.config.token, push_id=push_id[:256],
            version=version[:256], applied=reason is None, reason=(reason or "")[:2000]),
            timeout=10)

    async def _settle(self, push_id: str, version: str, reason: str | None) -> None:
        """Count, log and acknowledge one push's outcome."""
        self.counts["applied" if reason is None else "rejected"] += 1
        self.last_push = {"push_id": push_id[:256], "version": version[:256],
                          "applied": reason is None, "reason": reason, "time": time.time()}
        if reason is None:
            log.info("push %s: applied version %s", push_id[:64], version[:64])
        else:
            self.last_error = reason
            log.error("push %s (version %r) rejected: %s", push_id[:64], version[:64], reason)
        await self.ack(push_id, version, reason)

    async def subscribe(self) -> None:
        assembler = PushAssembler()
        stream = self.stub.Subscribe(pb.SubscribeRequest(
            agent_id=self.config.agent_id, token=self.config.token,
            current_version=self._subscribe_version()))
        self.state = SUBSCRIBED
        refused: str | None = None  # a push already refused: the rest of it is skipped
        async for msg in stream:
            kind = msg.WhichOneof("kind")
            push_id = getattr(msg, kind).push_id if kind else ""
            if kind != "header" and refused is not None and push_id == refused:
                continue
            pending = assembler.header  # the push being received, if any
            if kind == "header" and pending is not None:  # a new push before this one ended
                self.counts["received"] += 1
                await self._settle(pending.push_id, pending.version,
                                   "IntegrityError: a new push began before this one ended")
            try:
                done = assembler.feed(msg)
            except Exception as exc:  # a malformed push: this one is refused, not the next
                failed = pending if kind != "header" and pending is not None else None
                failed_id = failed.push_id if failed is not None else push_id
                version = (failed.version if failed is not None
                           else msg.header.version if kind == "header" else "")
                assembler, refused = PushAssembler(), failed_id
                self.counts["received"] += 1
                await self._settle(failed_id, version, _reason(exc))
                continue
            if done is not None:
                header, files = done
                self.counts["received"] += 1
                reason = await self.apply(header, files)
                self.received = header.version
                await self._settle(header.push_id, header.version, reason)

    async def _next_report(self) -> None:
        """The report interval, or sooner when the engine wants the cloud to hear now."""
        soon = self.agent.engine.report_soon if self.agent.engine is not None else None
        deadline = time.monotonic() + self.stats_interval_s
        while time.monotonic() < deadline:
            if soon is not None and soon.is_set():
                soon.clear()
                return
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def _send_retired(self) -> None:
        """Tell the cloud of partition models the device retired (an ``Ack`` that says
        not applied, with the reason): it does not push them again."""
        retired = self.agent.engine.retired if self.agent.engine is not None else None
        while retired:
            version, reason = retired[0]
            await self.ack("audit", version, reason)
            retired.popleft()

    async def report_stats(self) -> None:
        while True:
            await self._next_report()
            try:
                await self._send_retired()
            except grpc.RpcError as exc:
                log.debug("reporting a retired model failed: %s", exc)
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
        backoff = Backoff(0.5, 5.0)
        while True:
            try:
                self.state = CONNECTING
                await self.register()
                reporter = asyncio.create_task(self.report_stats())
                try:
                    backoff.reset()
                    await self.subscribe()
                finally:
                    reporter.cancel()
                why = "the subscription ended"
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("the cloud serves no control plane (no --store): pushes are off")
                    self.state = OFF
                    return
                why = f"control plane unavailable ({code.name if code else exc})"
            except Exception as exc:  # never end silently: log, count, reconnect
                log.exception("control plane failed")
                self.last_error = _reason(exc)
                why = "control plane failed"
            delay = backoff.next()
            log.info("%s; reconnecting in %.1f s", why, delay)
            self.state = RETRYING
            self.counts["reconnects"] += 1
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self.channel.close()
