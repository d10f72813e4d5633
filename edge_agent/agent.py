"""The edge agent: a ZeroMQ ROUTER in front of the cache model, escalating to the cloud.

One request, start to end (:meth:`EdgeAgent.handle`):

1. the ROUTER socket delivers ``[identity, b"", header, tensor]``; the tensor
   is viewed in place (:mod:`edge_agent.wire`);
2. the cache model runs under ONNX Runtime and the gate scores it
   (:class:`cachenet.runtime.CacheModel`);
3. confident: answer now, ``source: edge``. Unsure: escalate to the cloud over
   gRPC with a deadline (:class:`cachenet.client.AsyncCloudClient`) in a task,
   so other requests keep flowing; the cloud's answer goes back with
   ``source: cloud``;
4. cloud down, too slow, overloaded or refusing: answer with the edge's own
   prediction, ``source: edge-fallback`` and the reason. No request fails
   because of the cloud.

Lifecycle as in uvicorn: :meth:`startup`, :meth:`main_loop`, :meth:`shutdown`,
with SIGINT/SIGTERM handled in :meth:`install_signal_handlers`. No torch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from cachenet.client import AsyncCloudClient
from cachenet.exceptions import CachenetError, CloudError, InputSpecError, ProtocolError
from cachenet.runtime import CacheModel, load_cache_model
from edge_agent import wire
from edge_agent.config import AgentConfig
from edge_agent.stats import AgentStats, telemetry

log = logging.getLogger(__name__)


def _bind(sock: zmq.Socket, endpoint: str) -> str:
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        endpoint = endpoint[:-2] + ":*"
    sock.bind(endpoint)
    return sock.getsockopt(zmq.LAST_ENDPOINT).decode()


class EdgeAgent:
    def __init__(self, config: AgentConfig, *, model: CacheModel | None = None) -> None:
        self.config = config
        self.model = model
        self.cloud: AsyncCloudClient | None = None
        self.ctx = zmq.asyncio.Context.instance()
        self.sock: zmq.asyncio.Socket | None = None
        self.endpoint = ""
        self.stats = AgentStats(config.latency_window)
        self.inflight: set[asyncio.Task] = set()
        self.should_exit = asyncio.Event()
        self._main_task: asyncio.Task | None = None
        self._receiving = False

    # -- lifecycle ------------------------------------------------------
    async def startup(self) -> None:
        c = self.config
        if self.model is None:
            if c.bundle is None:
                raise CachenetError("no bundle configured (--bundle or CACHENET_BUNDLE)")
            self.model = load_cache_model(c.bundle, precision=c.precision, threads=c.threads)
        if c.cloud:
            self.cloud = AsyncCloudClient(c.cloud)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.endpoint = _bind(self.sock, c.bind)
        telemetry()  # prime psutil's CPU counter
        log.info("edge agent %s serving %s version %s on %s; cloud %s, deadline %.0f ms",
                 c.agent_id, self.model.manifest.name, self.model.version, self.endpoint,
                 c.cloud or "none (edge only)", c.deadline_ms)
        if c.ready_file is not None:
            tmp = c.ready_file.with_name(c.ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"endpoint": self.endpoint, "pid": os.getpid()}))
            tmp.replace(c.ready_file)

    async def main_loop(self) -> None:
        """Receive and handle requests until asked to exit.

        Only a wait for the next message is ever cancelled (by
        :meth:`request_exit`), never a request being handled, so every
        accepted request is answered.
        """
        assert self.sock is not None
        self._main_task = asyncio.current_task()
        while not self.should_exit.is_set():
            self._receiving = True
            try:
                frames = await self.sock.recv_multipart(copy=False)
            except asyncio.CancelledError:
                if self.should_exit.is_set():
                    break
                raise
            finally:
                self._receiving = False
            await self.handle(frames)

    def request_exit(self) -> None:
        self.should_exit.set()
        if self._receiving and self._main_task is not None:
            self._main_task.cancel()

    async def shutdown(self) -> None:
        log.info("shutting down: %d escalations in flight", len(self.inflight))
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=self.config.deadline_ms / 1e3 + 1.0)
        if self.cloud is not None:
            await self.cloud.close()
        if self.sock is not None:
            self.sock.close(linger=0)
        log.info("stopped after %s", self.stats.snapshot()["requests"])

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_exit)

    async def serve(self) -> None:
        self.install_signal_handlers()
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()

    # -- requests -------------------------------------------------------
    async def reply(self, envelope: list[Any], reply: dict[str, Any]) -> None:
        assert self.sock is not None
        await self.sock.send_multipart(wire.encode_reply(envelope, reply))

    async def handle(self, frames: list[Any]) -> None:
        t0 = time.perf_counter_ns()
        envelope, body = wire.split_envelope(frames)
        request_id: Any = None
        try:
            header, x = wire.parse_request(body)
            request_id = header.get("id")
            if header["op"] == "infer":
                await self.infer(envelope, header, self.model.check_input(x), t0)
            elif header["op"] == "stats":
                await self.reply(envelope, self.stats_reply(request_id))
            else:
                await self.reply(envelope, {"id": request_id, "ok": True, "pong": True})
        except (ProtocolError, InputSpecError) as exc:
            self.stats.counts["errors"] += 1
            await self.reply(envelope, wire.error_reply(request_id, type(exc).__name__, str(exc)))

    async def infer(self, envelope: list[Any], header: dict[str, Any], x: np.ndarray,
                    t0: int) -> None:
        model = self.model  # one reference: a swapped-in model serves the next request
        t1 = time.perf_counter_ns()
        logits = model.session.run(None, {model.input_name: x})[0]
        conf = float(model.gate.confidence(logits)[0])
        label = int(logits[0].argmax())
        t2 = time.perf_counter_ns()
        answer = {"id": header.get("id"), "ok": True, "label": label,
                  "class": model.manifest.classes[label], "confidence": conf,
                  "versions": {"cache": model.version},
                  "latency_us": {"edge_infer": (t2 - t1) / 1e3}}
        policy = header.get("policy", "auto")
        local = conf >= model.gate.threshold
        if policy == "edge" or (policy == "auto" and local):
            await self.finish(envelope, answer, "edge", t0)
        elif self.cloud is None:
            await self.finish(envelope, answer, "edge-fallback", t0, "no cloud configured")
        elif len(self.inflight) >= self.config.max_inflight:
            await self.finish(envelope, answer, "edge-fallback", t0, "too many escalations")
        else:
            deadline = self.config.deadline_ms
            if "deadline_ms" in header:
                deadline = min(deadline, float(header["deadline_ms"]))
            task = asyncio.create_task(self.escalate(envelope, answer, x, deadline / 1e3, t0))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)

    async def escalate(self, envelope: list[Any], answer: dict[str, Any], x: np.ndarray,
                       timeout: float, t0: int) -> None:
        assert self.cloud is not None
        t = time.perf_counter_ns()
        try:
            cloud = await self.cloud.infer(x, timeout=timeout, agent_id=self.config.agent_id,
                                           cache_model_version=answer["versions"]["cache"])
        except CloudError as exc:
            answer["latency_us"]["cloud"] = (time.perf_counter_ns() - t) / 1e3
            reason = type(exc).__name__
            self.stats.counts[f"fallback:{reason}"] += 1
            await self.finish(envelope, answer, "edge-fallback", t0, f"{reason}: {exc}")
            return
        label = int(cloud.labels[0])
        answer.update(label=label, confidence=float(cloud.confidences[0]),
                      edge_label=answer["label"], edge_confidence=answer["confidence"])
        answer["class"] = self.model.manifest.classes[label] if self.model else str(label)
        answer["versions"]["cloud"] = f"{cloud.model_name}:{cloud.model_version}"
        answer["latency_us"]["cloud"] = (time.perf_counter_ns() - t) / 1e3
        answer["latency_us"]["cloud_server"] = cloud.timings["total_us"]
        answer["cloud_batch_size"] = cloud.timings["batch_size"]
        await self.finish(envelope, answer, "cloud", t0)

    async def finish(self, envelope: list[Any], answer: dict[str, Any], source: str, t0: int,
                     reason: str | None = None) -> None:
        answer["source"] = source
        if reason is not None:
            answer["fallback_reason"] = reason
        total = (time.perf_counter_ns() - t0) / 1e3
        answer["latency_us"]["agent_total"] = total
        self.stats.record(source, answer["label"], total)
        await self.reply(envelope, answer)

    def stats_reply(self, request_id: Any) -> dict[str, Any]:
        model = self.model
        return {"id": request_id, "ok": True, "stats": self.stats.snapshot(),
                "telemetry": telemetry(), "agent_id": self.config.agent_id,
                "model": {"name": model.manifest.name, "version": model.version,
                          "threshold": model.gate.threshold, "score": model.gate.score},
                "cloud": self.config.cloud, "inflight": len(self.inflight)}
