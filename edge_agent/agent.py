"""The edge agent: a ZeroMQ ROUTER in front of the cache model, escalating to the cloud.

Everything runs on one asyncio event loop, in one thread: requests, escalations,
audits, the control plane, spool uploads and the watchdog. One request, start to end:

1. the ROUTER socket's file descriptor wakes the loop (:meth:`EdgeAgent._readable`),
   which reads what is queued, ``[identity, b"", header, tensor]``, the tensor viewed
   in place (:mod:`edge_agent.wire`), and hands each to :meth:`EdgeAgent.handle`;
2. :meth:`EdgeAgent.infer` asks the device's cascade (:mod:`edge_agent.engine`):
   layer caches, the active cache model under ONNX Runtime and its gate, an
   unsure partition model handing over to the general model, the general model
   re-weighted by the stream's prior;
3. confident: the answer goes back at once, ``source: edge``; a random share of
   these is also audited by the cloud (:meth:`EdgeAgent.shadow`, a task). Unsure:
   :meth:`EdgeAgent.escalate`, a task on the same loop, sends it to the cloud over
   gRPC with a deadline (:mod:`edge_agent.escalation`: cachenet's cloud or any Open
   Inference Protocol server, balanced over replicas, with gRPC's own retry of a call
   a replica dropped), while other requests keep flowing;
4. the cloud's answer (``source: cloud``), or on any failure the edge's own
   prediction (``source: edge-fallback`` with the reason: cloud down, too
   slow, overloaded, refusing), is sent from that task. No request fails because
   of the cloud.

What the cloud takes beyond a plain request (uint8 pixel levels, the spooled
field) it declares, and the agent asks (:meth:`EdgeAgent.watch_capabilities`). The
in-process front end (:mod:`edge_agent.local`) answers on its caller's thread instead;
what a request and an escalation's answer do to the cascade's state is done under
:attr:`EdgeAgent.lock` (never contended in the daemon, which has one thread). The
lifecycle reads like uvicorn's: :meth:`startup`, :meth:`main_loop`,
:meth:`shutdown`, and signals on the loop (SIGHUP reloads the bundle without
dropping a request, see :mod:`edge_agent.reload`). No torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from cachenet.core import strictjson, tensors
from cachenet.core.audit import Audit
from cachenet.core.backoff import Backoff
from cachenet.core.calibration import AGREEMENT_MODES
from cachenet.core.notify import Notifier
from cachenet.core.runtime import CacheModel, load_cache_model
from cachenet.exceptions import (
    CachenetError,
    CloudError,
    CloudRejected,
    CloudUnavailable,
    InputSpecError,
    ProtocolError,
)
from cachenet.protocol.client import SPOOLED, UINT8_LEVELS
from edge_agent import wire
from edge_agent.config import AgentConfig
from edge_agent.control import ControlClient
from edge_agent.engine import Decision, Engine, equip
from edge_agent.escalation import channel_target, connect
from edge_agent.keeper import Keeper, open_spool
from edge_agent.metrics import AgentMetrics
from edge_agent.partitions import ModelSet
from edge_agent.reload import Reloader
from edge_agent.spool import Spool
from edge_agent.stats import AgentStats, telemetry
from edge_agent.trust import Trust

log = logging.getLogger(__name__)

#: Requests read per wake-up of the socket, before the loop runs its other work
#: (escalations' answers, the watchdog): a steady stream starves nothing.
DRAIN_BATCH = 256
#: How long startup waits to learn what the cloud takes before serving anyway.
CAPABILITIES_WAIT_S = 2.0


def _bind(sock: zmq.Socket, endpoint: str) -> str:
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        endpoint = endpoint[:-2] + ":*"
    sock.bind(endpoint)
    return sock.getsockopt(zmq.LAST_ENDPOINT).decode()


class EdgeAgent:
    def __init__(self, config: AgentConfig, *, model: CacheModel | None = None) -> None:
        self.config = config
        self._model = model  # until startup: then the model set says which model is active
        self.models: ModelSet | None = None  # general + partition models held
        self.engine: Engine | None = None  # the cascade over them, with its audit
        #: escalate camera frames as their uint8 levels, where the cloud takes them
        self.native_uplink = config.native_uplink
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.endpoint = ""
        self.stats = AgentStats(config.latency_window)
        self.notifier = Notifier()  # systemd: READY=1, the watchdog, STOPPING=1
        self.metrics: AgentMetrics | None = None
        self.inflight = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.should_exit: asyncio.Event | None = None
        self.cloud: Any = None  # the escalation target's client (edge_agent.escalation)
        #: what the cloud declares it takes beyond a plain request (protocol.client), and
        #: whether it has said yet (the spool waits for that)
        self.capabilities: frozenset[str] = frozenset()
        self.capabilities_known: asyncio.Event | None = None
        self.control: ControlClient | None = None
        self.credentials: Any = None
        state = config.state_dir or (Path(config.bundle).resolve().parent / ".pushed"
                                     if config.bundle else None)
        self.trust = Trust(config.trusted_key, config.allow_rollback, state)
        self.reloader = Reloader(self._swap, check=self.trust.check_path)
        self.spool: Spool | None = None
        self.keeper: Keeper | None = None  # spools what the cloud missed, uploads it later
        self._tasks: set[asyncio.Task] = set()  # escalations, audits, spool writes
        self._services: list[asyncio.Task] = []  # control, uploads, capabilities, watchdog
        self._drain_scheduled = False
        self._draining = False
        self._cloud_lost: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None  # set while no escalation is in flight
        #: the cascade's state (the engine, in-flight counts, the spool's backlog) changes
        #: under this lock: requests may come from another thread (edge_agent.local)
        self.lock = threading.Lock()
        self._loop_thread: int | None = None

    # -- lifecycle ------------------------------------------------------
    async def startup(self) -> None:
        """Load and verify the bundle, bind the socket, connect to the cloud; on the
        running loop, which from here on serves everything."""
        c = self.config
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.should_exit = asyncio.Event()
        self._cloud_lost = asyncio.Event()
        self.capabilities_known = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        if self._model is None:
            if c.bundle is None:
                raise CachenetError("no bundle configured (--bundle or CACHENET_BUNDLE)")
            self.trust.check_path(c.bundle)  # before anything of it runs
            self._model = equip(load_cache_model(c.bundle, precision=c.precision,
                                                 threads=c.threads), c.threads)
        else:
            self.trust.check_bundle(self._model.manifest.data)
        self.credentials = c.channel_credentials()
        escalation = c.escalation_target()
        if escalation is not None and c.spool:
            self.spool = open_spool(c)
        if escalation is not None and not escalation.sends_levels:
            self.native_uplink = False  # another engine's model takes what it declares
        if escalation is not None and self.credentials is None:
            log.warning("the links to the cloud are PLAINTEXT: anyone on the path reads the "
                        "inputs and can impersonate the cloud (set tls_ca, tls_cert, tls_key)")
        self.models = ModelSet(self._model, k=c.partition_models)
        calibrated = self._model.manifest.gate.get("calibration")
        target = (calibrated.get("target") if isinstance(calibrated, dict)  # not a budget
                  and calibrated.get("mode") in AGREEMENT_MODES else None)
        self.engine = Engine(self.models, Audit(c.audit_config(target)),
                             layer_cache=c.layer_cache, label_shift=c.label_shift,
                             class_control=c.rolling_config())
        if c.bind:  # an in-process front end (edge_agent.local) binds nothing
            self.sock = self.ctx.socket(zmq.ROUTER)
            self.sock.setsockopt(zmq.LINGER, 0)
            # A bigger frame is refused (its sender disconnected) before it is buffered:
            # one request is one input, far below this.
            self.sock.setsockopt(zmq.MAXMSGSIZE, max(c.max_message_bytes,
                                                     4 * self._model.input_bytes + 65536))
            self.endpoint = _bind(self.sock, c.bind)
        ready: dict[str, Any] = {"endpoint": self.endpoint, "pid": os.getpid()}
        if c.metrics_port is not None:  # bound before anything else starts
            self.metrics = AgentMetrics(self)
            ready["metrics_port"] = self.metrics.serve(c.metrics_host, c.metrics_port)
        if escalation is not None:
            try:
                self.cloud = connect(escalation, self.credentials)
                if self.spool is not None:  # uploads on a channel of their own, no retries
                    self.keeper = Keeper(self, self.spool,
                                         connect(escalation, self.credentials, retry=False))
            except Exception as exc:
                raise CachenetError(f"cannot set up the cloud client for {escalation}: "
                                    f"{exc}") from exc
            asked = asyncio.Event()
            self.service(self.watch_capabilities(asked), "capabilities")
            if c.control and c.cloud:
                self.control = ControlClient(self, channel_target(c.cloud))
                self.service(self.control.run(), "control")
            if self.keeper is not None:
                self.service(self.keeper.upload(), "spool")
            with contextlib.suppress(asyncio.TimeoutError):  # known, if the cloud is up
                await asyncio.wait_for(asked.wait(), CAPABILITIES_WAIT_S + 1)
        if self.notifier.watchdog_s:
            self.service(self._watchdog(), "watchdog")
        telemetry()  # prime psutil's CPU counter
        log.info("edge agent %s serving %s version %s on %s; escalating to %s, deadline "
                 "%.0f ms", c.agent_id, self.model.manifest.name, self.model.version,
                 self.endpoint, f"{escalation.address} ({escalation.protocol})"
                 if escalation else "none (edge only)", c.deadline_ms)
        if c.ready_file is not None:
            strictjson.write(c.ready_file, ready, indent=None)
        # The bundle is loaded and verified, the socket bound, the cloud's client made.
        self.notifier.ready(f"serving {self.model.manifest.name} {self.model.version} on "
                            f"{self.endpoint}")

    def service(self, coro: Coroutine, name: str) -> asyncio.Task:
        """A background task that lives as long as the agent (cancelled at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._services.append(task)
        return task

    def spawn(self, coro: Coroutine) -> None:
        """A task of one request (an escalation, an audit, a spool write) on the agent's
        loop, from its thread or another; kept referenced until it ends."""
        assert self.loop is not None
        if threading.get_ident() != self._loop_thread:
            self.loop.call_soon_threadsafe(self.spawn, coro)
            return
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def main_loop(self) -> None:
        """Serve until asked to exit; every accepted request is answered."""
        assert self.sock is not None and self.loop is not None and self.should_exit
        fd = self.sock.getsockopt(zmq.FD)
        self.loop.add_reader(fd, self._readable)
        try:
            self._readable()  # what arrived before the reader was added
            await self.should_exit.wait()
        finally:
            self.loop.remove_reader(fd)

    def _readable(self) -> None:
        """The socket may have messages: read and answer up to DRAIN_BATCH of them. ZeroMQ's
        descriptor is edge-triggered, so what is queued is asked of the socket
        (``ZMQ_EVENTS``), and more than a batch is left for the loop's next turn."""
        self._drain_scheduled = False
        sock = self.sock
        assert sock is not None
        self._draining = True
        try:
            for _ in range(DRAIN_BATCH):
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    return
                self.handle(sock.recv_multipart(zmq.NOBLOCK, copy=False))
            self._wake()
        finally:
            self._draining = False

    def _wake(self) -> None:
        if not self._drain_scheduled and self.loop is not None:
            self._drain_scheduled = True
            self.loop.call_soon(self._readable)

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog from the loop that serves: a hang stops the pings."""
        while True:
            await asyncio.sleep(self.notifier.watchdog_s)
            self.notifier.watchdog()

    async def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("shutting down: %d escalations in flight", self.inflight)
        assert self._idle is not None
        try:  # what was accepted is answered: the cloud's answer or the edge's, in time
            await asyncio.wait_for(self._idle.wait(), self.config.deadline_ms / 1e3 + 2.0)
        except asyncio.TimeoutError:
            log.error("%d escalations still in flight at shutdown", self.inflight)
        pending = [*self._services, *self._tasks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for client in (self.control, self.cloud, self.keeper):
            if client is not None:
                try:
                    await client.close()
                except Exception:
                    log.exception("closing a channel to the cloud failed")
        if self.sock is not None:
            self.sock.close(linger=0)
        await asyncio.to_thread(self.reloader.join, 10)
        self.ctx.destroy(linger=0)
        if self.metrics is not None:
            self.metrics.close()
        log.info("stopped after %s requests", self.stats.snapshot()["requests"])

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM: finish what was accepted and exit. SIGHUP: reload the bundle."""
        loop = asyncio.get_running_loop()
        assert self.should_exit is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.should_exit.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """Load the configured bundle again, off the request path, and swap it in (once
        a reload already running ends)."""
        if self.config.bundle is None:
            return
        if self.reloader.busy:
            assert self.loop is not None
            self.loop.call_later(0.1, self.reload)
            return
        log.info("reloading %s", self.config.bundle)
        self.reloader.start(self.config.bundle, self.model, precision=self.config.precision,
                            threads=self.config.threads)

    @property
    def model(self) -> CacheModel | None:
        """The active cache model: one reference, swapped whole; requests in flight keep
        the one they started with."""
        return self.models.active if self.models is not None else self._model

    def _swap(self, model: CacheModel) -> None:
        if self.models is not None:
            self.models.add(model)
        else:
            self._model = model

    async def _serve(self) -> None:
        await self.startup()
        self.install_signal_handlers()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()

    def serve(self) -> None:
        asyncio.run(self._serve())

    # -- requests -------------------------------------------------------
    def reply(self, envelope: list[Any], reply: dict[str, Any]) -> None:
        sock = self.sock
        assert sock is not None
        sock.send_multipart(wire.encode_reply(envelope, reply))
        # A send outside the read loop may take the descriptor's edge for a request
        # that arrived meanwhile: ask the socket, and read it now if so.
        if not self._draining and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._wake()

    def handle(self, frames: list[Any]) -> None:
        t0 = time.perf_counter_ns()
        envelope, body = wire.split_envelope(frames)
        request_id: Any = None
        try:
            header, x = wire.parse_request(body)
            request_id = header.get("id")
            if header["op"] == "infer":
                self.infer(envelope, header, self.one_input(x), t0)
            elif header["op"] == "stats":
                self.reply(envelope, self.stats_reply(request_id))
            else:
                self.reply(envelope, {"id": request_id, "ok": True, "pong": True})
        except (ProtocolError, InputSpecError) as exc:
            self.stats.count("errors")
            request_id = getattr(exc, "request_id", request_id)
            self.reply(envelope, wire.error_reply(request_id, type(exc).__name__, str(exc)))
        except Exception as exc:  # a bug must cost one request an error, not the daemon
            log.exception("request failed")
            self.stats.count("errors")
            self.reply(envelope, wire.error_reply(request_id, "InternalError",
                                                  f"{type(exc).__name__}: {exc}"))

    def one_input(self, x: Any) -> np.ndarray:
        """``x`` as the 1 x C x H x W batch the model takes, or InputSpecError."""
        batch = self.model.check_input(x)  # type: ignore[union-attr]
        if len(batch) != 1:
            raise InputSpecError(f"the local API takes one input per request, got "
                                 f"{len(batch)}")
        return batch

    def infer(self, envelope: list[Any], header: dict[str, Any], x: np.ndarray,
              t0: int) -> None:
        with self.lock:
            self._infer(envelope, header, x, t0)

    def _infer(self, envelope: list[Any], header: dict[str, Any], x: np.ndarray,
               t0: int) -> None:
        t1 = time.perf_counter_ns()
        assert self.engine is not None
        decision = self.engine.decide(x, header, can_audit=self.cloud is not None)
        answer = decision.answer
        answer["latency_us"]["edge_infer"] = (time.perf_counter_ns() - t1) / 1e3
        policy = header.get("policy", "auto")
        if policy == "edge" or (policy == "auto" and decision.step is not None):
            self.finish(envelope, decision, "edge", t0)
            if decision.audit:  # its own copy: the caller may reuse the input's buffer
                self.stats.count("audits")
                self.spawn(self.shadow(decision, x.copy()))
        elif self.cloud is None:
            self.finish(envelope, decision, "edge-fallback", t0, "no cloud configured")
        elif self.inflight >= self.config.max_inflight:
            self.finish(envelope, decision, "edge-fallback", t0, "too many escalations")
            self.keep(x, decision)
        else:
            deadline = self.config.deadline_ms
            if "deadline_ms" in header:
                deadline = min(deadline, float(header["deadline_ms"]))
            self.inflight += 1
            self._idle.clear()  # type: ignore[union-attr]
            self.stats.count("escalated")
            self.spawn(self.escalate(envelope, decision, x, deadline / 1e3, t0))

    async def watch_capabilities(self, asked: asyncio.Event) -> None:
        """Ask the cloud what it takes beyond a plain request, and again whenever it was
        lost (it may come back another version, or another replica); until it answers,
        plain requests only: float32, no spooled field. ``asked`` is set once the first
        question has an answer or has failed."""
        assert self._cloud_lost is not None and self.capabilities_known is not None
        backoff = Backoff(0.5, 5.0)
        while True:
            try:
                caps = await self.cloud.capabilities(timeout=CAPABILITIES_WAIT_S)
            except CloudError as exc:
                asked.set()  # a cloud that is down: serve now, learn later
                await asyncio.sleep(backoff.next())
                log.debug("the cloud's capabilities are not known yet: %s", exc)
                continue
            if caps != self.capabilities:
                log.info("the cloud takes %s", ", ".join(sorted(caps)) or "plain requests")
            self.capabilities = caps
            self.capabilities_known.set()
            asked.set()
            backoff.reset()
            self._cloud_lost.clear()
            await self._cloud_lost.wait()

    async def ask_cloud(self, x: np.ndarray, timeout: float, version: str, *,
                        spooled: bool = False, client: Any = None) -> Any:
        """The cloud's answer for one input (raises :class:`CloudError`). A camera frame
        travels as its uint8 pixel levels where that loses nothing and the cloud takes
        them (4x fewer bytes up). ``client``: another channel to it (the spool's)."""
        caps = self.capabilities
        model = self.model
        levels = (tensors.to_levels(x, tensors.input_scale(model.manifest.input))
                  if self.native_uplink and UINT8_LEVELS in caps and model is not None
                  else None)
        try:
            cloud = await (client or self.cloud).infer(
                x if levels is None else levels, timeout=timeout,
                agent_id=self.config.agent_id, cache_model_version=version,
                spooled=spooled and SPOOLED in caps)
        except CloudUnavailable:
            self._cloud_lost.set()  # type: ignore[union-attr]
            raise
        classes = model.manifest.classes if model else []
        if len(cloud.labels) != 1 or not 0 <= int(cloud.labels[0]) < len(classes):
            raise CloudError(f"cloud answered labels {cloud.labels.tolist()} for one input "
                             f"of {len(classes)} classes")
        return cloud

    async def escalate(self, envelope: list[Any], decision: Decision, x: np.ndarray,
                       timeout: float, t0: int) -> None:
        """Ask the cloud, then answer: with its label, or the edge's on any failure."""
        answer = decision.answer
        t = time.perf_counter_ns()
        source, reason, keep = "edge-fallback", "escalation cancelled", False
        try:
            cloud = await self.ask_cloud(x, timeout, answer["versions"]["cache"])
            classes = self.model.manifest.classes  # type: ignore[union-attr]
            label = int(cloud.labels[0])
            answer.update(label=label, confidence=float(cloud.confidences[0]),
                          edge_label=answer["label"], edge_confidence=answer["confidence"],
                          cloud_batch_size=cloud.timings["batch_size"], **{"class": classes[label]})
            answer["versions"]["cloud"] = f"{cloud.model_name}:{cloud.model_version}"
            answer["latency_us"]["cloud_server"] = cloud.timings["total_us"]
            source, reason = "cloud", None
        except CloudError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            keep = not isinstance(exc, CloudRejected)  # the cloud was away: it sees it later
        except asyncio.CancelledError:  # shutting down past the deadline: answer, then go
            self._answer_escalation(envelope, decision, source, t0, reason, t)
            raise
        except Exception as exc:  # never lose a request to an unexpected failure
            log.exception("escalation failed")
            reason = f"{type(exc).__name__}: {exc}"
        self._answer_escalation(envelope, decision, source, t0, reason, t,
                                x if keep else None)

    def _answer_escalation(self, envelope: list[Any], decision: Decision, source: str,
                           t0: int, reason: str | None, t: int,
                           keep: np.ndarray | None = None) -> None:
        decision.answer["latency_us"]["cloud"] = (time.perf_counter_ns() - t) / 1e3
        with self.lock:
            self.inflight -= 1
            if not self.inflight:
                self._idle.set()  # type: ignore[union-attr]
            if reason is not None:
                self.stats.count(f"fallback:{reason.split(':', 1)[0]}")
            if keep is not None:
                self.keep(keep, decision)
            try:
                self.finish(envelope, decision, source, t0, reason)
            except Exception:  # the socket closing under a late answer, say
                log.exception("answering an escalation failed")

    def keep(self, x: np.ndarray, decision: Decision) -> None:
        """Spool an input answered without the cloud, to upload later (if spooling)."""
        if self.keeper is not None:
            self.keeper.keep(x, decision)

    async def shadow(self, decision: Decision, x: np.ndarray) -> None:
        """An audit of an edge answer already sent: the cloud's label, counted."""
        label, reason = None, "audit cancelled"
        try:
            cloud = await self.ask_cloud(x, self.config.deadline_ms / 1e3,
                                         decision.answer["versions"]["cache"])
            label, reason = int(cloud.labels[0]), None
        except CloudError as exc:
            reason = f"cloud unreachable: {type(exc).__name__}"
        except asyncio.CancelledError:
            with self.lock:
                self.engine.audited(decision, None, reason)  # type: ignore[union-attr]
            raise
        except Exception as exc:
            log.exception("audit failed")
            reason = f"{type(exc).__name__}: {exc}"
        with self.lock:
            self.engine.audited(decision, label, reason)  # type: ignore[union-attr]

    def finish(self, envelope: list[Any], decision: Decision, source: str, t0: int,
               reason: str | None = None) -> None:
        answer = decision.answer
        answer["source"] = source
        if reason is not None:
            answer["fallback_reason"] = reason
        total = (time.perf_counter_ns() - t0) / 1e3
        answer["latency_us"]["agent_total"] = total
        self.stats.record(source, answer["label"], total, decision.step)  # counted, then sent
        self.reply(envelope, answer)
        if self.engine is not None:  # after the reply: off the request's path
            try:
                self.engine.learn(decision, source)
            except Exception:  # the request is answered: a failure here must not answer twice
                log.exception("learning from an answer failed")

    def stats_reply(self, request_id: Any) -> dict[str, Any]:
        model = self.model
        return {"id": request_id, "ok": True, "stats": self.stats.snapshot(),
                "telemetry": telemetry(), "agent_id": self.config.agent_id,
                "model": {"name": model.manifest.name, "version": model.version,
                          "threshold": model.gate.threshold, "score": model.gate.score},
                "cloud": self.config.cloud, "inflight": self.inflight,
                "capabilities": sorted(self.capabilities),
                "reloads": self.reloader.snapshot(),
                "spool": self.spool.snapshot() if self.spool is not None else None,
                "control": self.control.snapshot() if self.control is not None else None,
                "models": self.models.snapshot() if self.models is not None else None,
                "layer_cache": (model.layers.cascade.snapshot()  # type: ignore[attr-defined]
                                if model.layers is not None else None),
                **(self.engine.snapshot() if self.engine is not None else {})}
