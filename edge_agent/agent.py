"""The edge agent: a ZeroMQ ROUTER in front of the cache model, escalating to the cloud.

One request, start to end:

1. :meth:`EdgeAgent.main_loop` receives ``[identity, b"", header, tensor]`` on
   the ROUTER socket; the tensor is viewed in place (:mod:`edge_agent.wire`);
2. :meth:`EdgeAgent.infer` asks the device's cascade (:mod:`edge_agent.engine`):
   layer caches, the active cache model under ONNX Runtime and its gate, an
   unsure partition model handing over to the general model, the general model
   re-weighted by the stream's prior;
3. confident: the answer goes back at once, ``source: edge``, without leaving
   the receiving thread; a random share of these is also audited by the cloud
   (:meth:`EdgeAgent.shadow`). Unsure: :meth:`EdgeAgent.escalate` sends it to the
   cloud over gRPC with a deadline (:mod:`edge_agent.escalation`: cachenet's cloud or
   any Open Inference Protocol server, balanced over replicas), on an asyncio loop in a
   second thread, so other requests keep flowing;
4. the cloud's answer (``source: cloud``), or on any failure the edge's own
   prediction (``source: edge-fallback`` with the reason: cloud down, too
   slow, overloaded, refusing), comes back to the receiving thread, which
   sends it. No request fails because of the cloud.

Each ZeroMQ socket is used by one thread only. The lifecycle reads like
uvicorn's: :meth:`startup`, :meth:`main_loop`, :meth:`shutdown`, and signals in
:meth:`install_signal_handlers` (SIGHUP reloads the bundle without dropping a
request, see :mod:`edge_agent.reload`). No torch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from cachenet.core import strictjson, tensors
from cachenet.core.audit import Audit
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
from edge_agent import wire
from edge_agent.config import AgentConfig
from edge_agent.control import ControlClient
from edge_agent.engine import Decision, Engine, equip
from edge_agent.escalation import EscalationTarget, channel_target, connect
from edge_agent.keeper import Keeper, open_spool
from edge_agent.metrics import AgentMetrics
from edge_agent.partitions import ModelSet
from edge_agent.reload import Reloader
from edge_agent.spool import Spool
from edge_agent.stats import AgentStats, telemetry
from edge_agent.trust import Trust

log = logging.getLogger(__name__)

POLL_MS = 100  # how often the loop looks at the exit flag when idle
#: Requests handled per turn of the loop, before it looks at escalations and the watchdog.
DRAIN_BATCH = 256
#: An escalation that failed UNAVAILABLE is tried again only with this much time left.
RETRY_MIN_S = 0.005


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
        #: escalate camera frames as their uint8 levels (``native_uplink``)
        self.native_uplink = config.native_uplink
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.endpoint = ""
        self.stats = AgentStats(config.latency_window)
        self.should_exit = threading.Event()
        self.notifier = Notifier()  # systemd: READY=1, the watchdog, STOPPING=1
        self.metrics: AgentMetrics | None = None
        self.inflight = 0
        # Escalations: run on `self.loop` in another thread; finished answers come
        # back through `self.done` and a wake-up byte on an inproc PAIR socket.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cloud: Any = None  # the escalation target's client (edge_agent.escalation)
        self.control: ControlClient | None = None
        self.done: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._wake_rx: zmq.Socket | None = None
        self._wake_tx: zmq.Socket | None = None  # used only on the loop's thread
        self._thread: threading.Thread | None = None
        state = config.state_dir or (Path(config.bundle).resolve().parent / ".pushed"
                                     if config.bundle else None)
        self.trust = Trust(config.trusted_key, config.allow_rollback, state)
        self.reloader = Reloader(self._swap, check=self.trust.check_path)
        self.spool: Spool | None = None
        self.keeper: Keeper | None = None  # spools what the cloud missed, uploads it later
        self.reload_requested = threading.Event()

    # -- lifecycle ------------------------------------------------------
    def startup(self) -> None:
        c = self.config
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
            self.keeper = Keeper(self, self.spool) if self.spool is not None else None
        if escalation is not None and not escalation.sends_levels:
            self.native_uplink = False  # another engine's model takes what it declares
        if escalation is not None and self.credentials is None:
            log.warning("the links to the cloud are PLAINTEXT: anyone on the path reads the "
                        "inputs and can impersonate the cloud (set tls_ca, tls_cert, tls_key)")
        self.models = ModelSet(self._model, k=c.partition_models)
        calibrated = self._model.manifest.gate.get("calibration")
        target = (calibrated.get("target") if isinstance(calibrated, dict)  # not a budget
                  and calibrated.get("mode") == "agreement" else None)
        self.engine = Engine(self.models, Audit(c.audit_config(target)),
                             layer_cache=c.layer_cache, label_shift=c.label_shift)
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
            self._start_escalation_loop(escalation)
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

    def _start_escalation_loop(self, target: EscalationTarget) -> None:
        address = f"inproc://escalations-{id(self)}"
        self._wake_rx = self.ctx.socket(zmq.PAIR)
        self._wake_rx.bind(address)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            control_task: asyncio.Task | None = None
            upload_task: asyncio.Task | None = None
            self._wake_tx = self.ctx.socket(zmq.PAIR)
            try:
                self._wake_tx.setsockopt(zmq.SNDHWM, 0)
                self._wake_tx.connect(address)
                self.cloud = connect(target, self.credentials)
                if self.config.control and self.config.cloud:
                    self.control = ControlClient(self, channel_target(self.config.cloud))
                    control_task = self.loop.create_task(self.control.run(), name="control")
                if self.keeper is not None:
                    upload_task = self.loop.create_task(self.keeper.upload(), name="spool")
            except BaseException as exc:
                failure.append(exc)
                self._wake_tx.close(linger=0)
                return
            finally:
                ready.set()
            try:
                self.loop.run_forever()
                if upload_task is not None:
                    upload_task.cancel()
                    self.loop.run_until_complete(asyncio.gather(upload_task,
                                                                return_exceptions=True))
                if self.control is not None and control_task is not None:
                    control_task.cancel()
                    self.loop.run_until_complete(asyncio.gather(control_task,
                                                                return_exceptions=True))
                    self.loop.run_until_complete(self.control.close())
                self.loop.run_until_complete(self.cloud.close())
            except Exception:
                log.exception("closing the cloud channel failed")
            finally:
                self._wake_tx.close(linger=0)

        self._thread = threading.Thread(target=run, name="escalations", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise CachenetError(f"cannot set up the cloud client for {target}: {failure[0]}")

    def main_loop(self) -> None:
        """Receive and answer until asked to exit; every accepted request is answered."""
        assert self.sock is not None
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self._wake_rx is not None:
            poller.register(self._wake_rx, zmq.POLLIN)
        pinged = time.monotonic()
        while not self.should_exit.is_set():
            events = dict(poller.poll(POLL_MS))
            if self.notifier.watchdog_s and time.monotonic() - pinged >= self.notifier.watchdog_s:
                self.notifier.watchdog()  # from the loop that serves: a hang stops the pings
                pinged = time.monotonic()
            if self.reload_requested.is_set() and not self.reloader.busy:
                self.reload_requested.clear()
                self.reload()
            if self._wake_rx is not None and events.get(self._wake_rx):
                self.deliver_escalations()
            if events.get(self.sock):
                self.drain()

    def drain(self) -> None:
        """What is queued on the socket (up to DRAIN_BATCH requests, so that a steady
        stream does not starve escalations' answers and the watchdog), then back to
        polling. Whether more is queued
        is asked of the socket (``ZMQ_EVENTS``), not learnt from a failing receive: on
        this path an exception per request costs more than the agent's own work."""
        sock = self.sock
        assert sock is not None
        for _ in range(DRAIN_BATCH):  # then the loop's other work: answers, the watchdog
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.handle(frames)
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("shutting down: %d escalations in flight", self.inflight)
        deadline = time.monotonic() + self.config.deadline_ms / 1e3 + 2.0
        while self.inflight and time.monotonic() < deadline and self._wake_rx is not None:
            if self._wake_rx.poll(POLL_MS):
                self.deliver_escalations()
        if self.loop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if self._wake_rx is not None:
                self.deliver_escalations()  # anything that finished while stopping
        for sock in (self.sock, self._wake_rx):
            if sock is not None:
                sock.close(linger=0)
        self.reloader.join(10)
        self.ctx.destroy(linger=0)
        if self.metrics is not None:
            self.metrics.close()
        log.info("stopped after %s requests", self.stats.snapshot()["requests"])

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM: finish what was accepted and exit. SIGHUP: reload the bundle."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.should_exit.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def reload(self) -> None:
        """Load the configured bundle again, off the request path, and swap it in."""
        if self.config.bundle is None:
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

    def serve(self) -> None:
        self.install_signal_handlers()
        self.startup()
        try:
            self.main_loop()
        finally:
            self.shutdown()

    # -- requests -------------------------------------------------------
    def reply(self, envelope: list[Any], reply: dict[str, Any]) -> None:
        assert self.sock is not None
        self.sock.send_multipart(wire.encode_reply(envelope, reply))

    def handle(self, frames: list[Any]) -> None:
        t0 = time.perf_counter_ns()
        envelope, body = wire.split_envelope(frames)
        request_id: Any = None
        try:
            header, x = wire.parse_request(body)
            request_id = header.get("id")
            if header["op"] == "infer":
                batch = self.model.check_input(x)
                if len(batch) != 1:
                    raise InputSpecError(f"the local API takes one input per request, got "
                                         f"{len(batch)}")
                self.infer(envelope, header, batch, t0)
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

    def infer(self, envelope: list[Any], header: dict[str, Any], x: np.ndarray,
              t0: int) -> None:
        t1 = time.perf_counter_ns()
        assert self.engine is not None
        decision = self.engine.decide(x, header, can_audit=self.loop is not None)
        answer = decision.answer
        answer["latency_us"]["edge_infer"] = (time.perf_counter_ns() - t1) / 1e3
        policy = header.get("policy", "auto")
        if policy == "edge" or (policy == "auto" and decision.step is not None):
            if decision.audit:  # its own copy: the caller may reuse the input's buffer
                self.stats.count("audits")
                asyncio.run_coroutine_threadsafe(self.shadow(decision, x.copy()), self.loop)
            self.finish(envelope, decision, "edge", t0)
        elif self.loop is None:
            self.finish(envelope, decision, "edge-fallback", t0, "no cloud configured")
        elif self.inflight >= self.config.max_inflight:
            self.finish(envelope, decision, "edge-fallback", t0, "too many escalations")
            self.keep(x, decision)
        else:
            deadline = self.config.deadline_ms
            if "deadline_ms" in header:
                deadline = min(deadline, float(header["deadline_ms"]))
            self.inflight += 1
            self.stats.count("escalated")
            asyncio.run_coroutine_threadsafe(
                self.escalate(envelope, decision, x, deadline / 1e3, t0), self.loop)

    async def ask_cloud(self, x: np.ndarray, timeout: float, version: str, *,
                        spooled: bool = False) -> Any:
        """The cloud's answer for one input (raises :class:`CloudError`). A camera frame
        travels as its uint8 pixel levels where that loses nothing (4x fewer bytes up);
        a cloud that refuses them gets float32 from then on."""
        assert self.cloud is not None
        levels = (tensors.to_levels(x, tensors.input_scale(self.model.manifest.input))
                  if self.native_uplink and self.model is not None else None)
        started = time.monotonic()
        send = x if levels is None else levels
        for attempt in (1, 2):
            left = timeout - (time.monotonic() - started)  # one deadline for both tries
            try:
                cloud = await self.cloud.infer(send, timeout=max(left, 1e-3),
                                               agent_id=self.config.agent_id,
                                               cache_model_version=version, spooled=spooled)
                break
            except CloudRejected as exc:
                if send is x or "dtype" not in str(exc) or attempt == 2:
                    raise
                log.warning("the cloud refuses inputs as uint8 pixel levels (%s): sending "
                            "float32", exc)
                self.native_uplink = False
                send = x
            except CloudUnavailable as exc:
                # A replica went away under the call: the balanced channel sends the
                # second try to another, within the same deadline. Only on UNAVAILABLE
                # (not a CANCELLED call, which may have run), only with time left, and
                # not for spooled uploads, which retry on their own (and are counted).
                if (attempt == 2 or spooled or exc.code != "UNAVAILABLE"
                        or timeout - (time.monotonic() - started) < RETRY_MIN_S):
                    raise
        classes = self.model.manifest.classes if self.model else []
        if len(cloud.labels) != 1 or not 0 <= int(cloud.labels[0]) < len(classes):
            raise CloudError(f"cloud answered labels {cloud.labels.tolist()} for one input "
                             f"of {len(classes)} classes")
        return cloud

    async def escalate(self, envelope: list[Any], decision: Decision, x: np.ndarray,
                       timeout: float, t0: int) -> None:
        """On the escalation loop: ask the cloud, then hand the answer back."""
        assert self._wake_tx is not None
        answer = decision.answer
        t = time.perf_counter_ns()
        source, reason = "edge-fallback", "escalation cancelled"
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
            if not isinstance(exc, CloudRejected):  # the cloud was away: it sees it later
                self.keep(x, decision)
        except Exception as exc:  # never lose a request to an unexpected failure
            log.exception("escalation failed")
            reason = f"{type(exc).__name__}: {exc}"
        finally:  # whatever happened, the answer goes back to the receiving thread
            answer["latency_us"]["cloud"] = (time.perf_counter_ns() - t) / 1e3
            self.done.put((envelope, decision, source, t0, reason))
            self._wake_tx.send(b"", copy=True)

    def keep(self, x: np.ndarray, decision: Decision) -> None:
        """Spool an input answered without the cloud, to upload later (if spooling)."""
        if self.keeper is not None:
            self.keeper.keep(x, decision)

    async def shadow(self, decision: Decision, x: np.ndarray) -> None:
        """On the escalation loop: an audit of an edge answer already sent."""
        assert self._wake_tx is not None
        label, reason = None, "audit cancelled"
        try:
            cloud = await self.ask_cloud(x, self.config.deadline_ms / 1e3,
                                         decision.answer["versions"]["cache"])
            label, reason = int(cloud.labels[0]), None
        except CloudError as exc:
            reason = f"cloud unreachable: {type(exc).__name__}"
        except Exception as exc:
            log.exception("audit failed")
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.put((None, decision, label, 0, reason))
            self._wake_tx.send(b"", copy=True)

    def deliver_escalations(self) -> None:
        assert self._wake_rx is not None and self.engine is not None
        while True:
            try:
                self._wake_rx.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        while True:
            try:
                envelope, decision, source, t0, reason = self.done.get_nowait()
            except queue.Empty:
                return
            if envelope is None:  # an audit: `source` is the cloud's label or None
                self.engine.audited(decision, source, reason)
                continue
            self.inflight -= 1
            if reason is not None:
                self.stats.count(f"fallback:{reason.split(':', 1)[0]}")
            self.finish(envelope, decision, source, t0, reason)

    def finish(self, envelope: list[Any], decision: Decision, source: str, t0: int,
               reason: str | None = None) -> None:
        answer = decision.answer
        answer["source"] = source
        if reason is not None:
            answer["fallback_reason"] = reason
        total = (time.perf_counter_ns() - t0) / 1e3
        answer["latency_us"]["agent_total"] = total
        self.stats.record(source, answer["label"], total, decision.step)
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
                "reloads": self.reloader.snapshot(),
                "spool": self.spool.snapshot() if self.spool is not None else None,
                "control": self.control.snapshot() if self.control is not None else None,
                "models": self.models.snapshot() if self.models is not None else None,
                "layer_cache": (model.layers.cascade.snapshot()  # type: ignore[attr-defined]
                                if model.layers is not None else None),
                **(self.engine.snapshot() if self.engine is not None else {})}
