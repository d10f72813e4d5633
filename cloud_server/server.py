"""The cloud server: build it with :func:`create_server`, run it with :func:`serve`.

``create_server`` binds a ``grpc.aio`` server (port 0 picks a free port) with
the inference service, standard health checking and server reflection, and
returns ``(server, port)``; the service and batcher hang off ``server.cachenet``.
:class:`CloudServer` owns the lifecycle, as uvicorn's ``Server`` does:
startup, main loop (periodic stats in the log), and a graceful shutdown on
SIGTERM/SIGINT: health goes NOT_SERVING, no new RPCs are accepted, queued and
in-flight work drains, then the process exits. With a model store it also
serves the control plane (:mod:`cloud_server.control`), and with
``specialize`` it learns per agent what to push (:mod:`cloud_server.specializer`);
loading the specialiser takes a while (it labels the replay data), so it has
its own health entry, :data:`SPECIALIZER_HEALTH`, SERVING once it is ready.
With diffusion models (a :class:`~cachenet.diffusion.generate.Generator`) it also
serves the generation service (:mod:`cloud_server.generate`); the classifier's
bundle is needed all the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cachenet.core import strictjson, tensors
from cachenet.core.notify import Notifier
from cachenet.diffusion.generate import Generator
from cachenet.exceptions import CachenetError, ConfigError
from cachenet.fleet.store import ModelStore
from cachenet.protocol.client import CHANNEL_OPTIONS
from cachenet.protocol.tls import server_credentials
from cachenet.protocol.v1 import control_pb2, control_pb2_grpc
from cachenet.protocol.v1 import inference_pb2 as pb
from cloud_server.batcher import DynamicBatcher
from cloud_server.config import ServerConfig
from cloud_server.control import ControlService
from cloud_server.generate import SERVICE_NAME as GENERATION_SERVICE_NAME
from cloud_server.generate import GenerationService, load_generator
from cloud_server.generate import add_to_server as add_generation_to_server
from cloud_server.inference import InferenceCore, ModelCard
from cloud_server.layered import LayeredStats, layered_runner, load_layer_cascade
from cloud_server.metrics import CloudMetrics
from cloud_server.model import load_full_model, torch_runner
from cloud_server.oip import SERVICE_NAME as OIP_SERVICE_NAME
from cloud_server.oip import OIPService
from cloud_server.oip import add_to_server as add_oip_to_server
from cloud_server.service import InferenceService, add_to_server
from cloud_server.specializer import Specializer, build_specializer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
#: gRPC core holds calls that arrived before the server asked for them; past
#: ``max_pending_requests`` (1,000 by default) it cancels them unseen, so a burst of
#: 2,000 calls lost about a tenth to CANCELLED. Held up to these limits, every call
#: reaches the service, which answers those beyond its queue RESOURCE_EXHAUSTED.
SERVER_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.server.max_pending_requests", 10_000),
                  ("grpc.server.max_pending_requests_hard_limit", 20_000)]
#: Health-check name of the specialiser: NOT_SERVING while it loads (or when it failed).
SPECIALIZER_HEALTH = "cachenet.v1.Specializer"


@dataclass
class ServerParts:
    """What :func:`create_server` wires into the gRPC server (``server.cachenet``)."""

    core: InferenceCore  # what every protocol's front end answers through
    service: InferenceService  # cachenet.v1
    batcher: DynamicBatcher
    health: health.aio.HealthServicer
    control: ControlService | None = None
    specializer: Specializer | None = None
    generation: GenerationService | None = None
    oip: OIPService | None = None  # the Open Inference Protocol (KServe v2)


def load_card_and_runner(bundle: Path, device: str | None, *, layer_cache: bool = False,
                         refresh_rate: float | None = None, stats: LayeredStats | None = None):
    """The model card and ``run_batch`` of the bundle's full model; with ``layer_cache``,
    served through its layer caches (:mod:`cloud_server.layered`)."""
    model, manifest = load_full_model(bundle, device=device)
    dev = next(model.parameters(), torch.empty(0)).device
    spec = manifest.input
    info = manifest.data["full_model"]
    name = (info.get("spec") or {}).get("arch") or "full"
    card = ModelCard(name=name, version=manifest.files[info["files"][0]]["sha256"][:12],
                     input_shape=tuple(int(d) for d in spec["shape"][1:]),
                     input_dtype=spec["dtype"], classes=manifest.classes, device=str(dev),
                     input_scale=tensors.input_scale(spec))
    if layer_cache:
        cascade, grid = load_layer_cascade(manifest, Path(bundle), refresh_rate=refresh_rate)
        log.info("layer caches on: %s", ", ".join(r.name for r in cascade.rules) or "none")
        return card, layered_runner(model, cascade, stats, grid)
    return card, torch_runner(model, dev)


async def create_server(card: ModelCard, run_batch, config: ServerConfig | None = None, *,
                        signing_key: Any = None, generator: Generator | None = None
                        ) -> tuple[grpc.aio.Server, int]:
    """A started batcher and a bound (not yet started) gRPC server for ``config``'s host,
    port, batching, store and TLS (default: :class:`ServerConfig`'s); call in a running
    loop. With ``generator``, the server also generates images (``GenerationService``)."""
    c = config or ServerConfig()
    host, port, tls = c.host, c.port, c.tls()
    batcher = DynamicBatcher(run_batch, max_batch_size=c.max_batch_size,
                             max_queue_delay_us=c.max_queue_delay_us,
                             max_queue_size=c.max_queue_size)
    core = InferenceCore(card, batcher)
    service = InferenceService(core)
    oip = OIPService(core)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_to_server(service, server)
    add_oip_to_server(oip, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [SERVICE_NAME, OIP_SERVICE_NAME,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    control = None
    if c.store is not None:
        control = ControlService(ModelStore(c.store, signing_key=signing_key),
                                 stats_interval_s=c.report_interval_s)
        control_pb2_grpc.add_ControlServiceServicer_to_server(control, server)
        names.append(control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name)
    generation = None
    if generator is not None:
        generation = GenerationService(generator, max_pending=c.max_generations)
        add_generation_to_server(generation, server)
        names.append(GENERATION_SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    if tls is not None:
        bound = server.add_secure_port(f"{host}:{port}", server_credentials(
            tls, require_client_cert=c.tls_client_cert))
    else:
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("serving PLAINTEXT on %s: inputs travel in the clear and agents are "
                        "not authenticated (set --tls-ca, --tls-cert, --tls-key)", host)
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    batcher.start()
    core.ready = True
    server.cachenet = ServerParts(core, service, batcher,  # type: ignore[attr-defined]
                                  health_servicer, control, generation=generation, oip=oip)
    return server, bound


class CloudServer:
    """Lifecycle of one cloud server process: startup, main loop, shutdown."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.should_exit = asyncio.Event()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.specializer_task: asyncio.Task | None = None
        self.layered: LayeredStats | None = None
        self._signing_key: Any = None
        self.metrics: CloudMetrics | None = None
        self.health_server: grpc.aio.Server | None = None
        self.notifier = Notifier()

    def signing_key(self) -> Any:
        """The fleet's signing key (``--signing-key``), read once; None when unset."""
        if self._signing_key is None and self.config.signing_key is not None:
            from cachenet.core.signing import load_private_key

            self._signing_key = load_private_key(self.config.signing_key)
        return self._signing_key

    async def startup(self) -> None:
        c = self.config
        if c.bundle is None:
            raise ConfigError("no bundle configured (--bundle or CACHENET_BUNDLE)")
        self.layered = LayeredStats() if c.layer_cache else None
        card, runner = load_card_and_runner(c.bundle, c.device, layer_cache=c.layer_cache,
                                            refresh_rate=c.layer_cache_refresh,
                                            stats=self.layered)
        generator = (load_generator(c.diffusion, c.device, max_image_steps=c.max_image_steps)
                     if c.diffusion else None)
        self.server, self.port = await create_server(
            card, runner, c, signing_key=self.signing_key(), generator=generator)
        # Every port is bound before any of them serves: one that cannot be bound stops
        # the start with nothing serving half-way.
        ready: dict[str, Any] = {"port": self.port, "pid": os.getpid()}
        if c.metrics_port is not None:
            self.metrics = CloudMetrics(self.server.cachenet)
            ready["metrics_port"] = self.metrics.serve(c.metrics_host, c.metrics_port)
        if c.health_port is not None:
            ready["health_port"] = await self.start_health_server()
        await self.server.start()
        health_ = self.server.cachenet.health
        serving = ("", SERVICE_NAME, OIP_SERVICE_NAME) + (
            (GENERATION_SERVICE_NAME,) if generator else ())
        for name in serving:
            await health_.set(name, health_pb2.HealthCheckResponse.SERVING)
        if c.specialize:
            await health_.set(SPECIALIZER_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("serving %s version %s on %s:%d (device %s, max_batch_size %d, "
                 "max_queue_delay_us %d)", card.name, card.version, c.host, self.port,
                 card.device, c.max_batch_size, c.max_queue_delay_us)
        if c.ready_file is not None:
            strictjson.write(c.ready_file, ready, indent=None)
        self.notifier.ready(f"serving {card.name} {card.version} on port {self.port}")
        if c.specialize:
            self.specializer_task = asyncio.create_task(self.run_specializer(),
                                                        name="specializer")

    async def start_health_server(self) -> int:
        """The health service alone, plaintext, on ``health_port``: it tells whether the
        server serves, and nothing else (its state is the main server's)."""
        c = self.config
        self.health_server = grpc.aio.server(options=SERVER_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(
            self.server.cachenet.health, self.health_server)  # type: ignore[union-attr]
        port = self.health_server.add_insecure_port(f"{c.host}:{c.health_port}")
        if port == 0:
            raise OSError(f"cannot bind the health port {c.host}:{c.health_port}")
        await self.health_server.start()
        log.info("health (plaintext, health service only) on %s:%d", c.host, port)
        return port

    async def run_specializer(self) -> None:
        """Load the specialiser off the loop (it labels the replay data), then run it."""
        c = self.config
        parts: ServerParts = self.server.cachenet  # type: ignore[union-attr]
        try:
            spec = await asyncio.to_thread(build_specializer, c.bundle,
                                           ModelStore(c.store, signing_key=self.signing_key()),
                                           replay=c.replay, device=c.device,
                                           config=c.specializer(), library_dir=c.library)
        except CachenetError as exc:
            log.error("specialisation is off: %s", exc)
            return
        parts.specializer = spec
        assert parts.control is not None
        parts.control.specializer = spec
        parts.core.observer = parts.control.observe
        await parts.health.set(SPECIALIZER_HEALTH, health_pb2.HealthCheckResponse.SERVING)
        await spec.run()

    def log_stats(self) -> None:
        parts: ServerParts = self.server.cachenet  # type: ignore[union-attr]
        s = parts.batcher.stats
        log.info("requests %s; batches %d, mean batch size %.2f, sizes %s",
                 parts.service.counts, s.batches, s.mean_batch_size(),
                 dict(sorted(s.batch_sizes.items())))
        if self.layered is not None:
            log.info("layer caches: %s", self.layered.snapshot())
        if parts.generation is not None:
            log.info("generations %s", parts.generation.counts)

    async def main_loop(self) -> None:
        """Log stats every ``stats_interval_s``; under systemd's watchdog, ping it at half
        its period, from this loop, so a loop that hangs stops the pings."""
        interval = self.config.stats_interval_s
        tick = min(interval, self.notifier.watchdog_s or interval)
        loop = asyncio.get_running_loop()
        next_stats = loop.time() + interval
        while not self.should_exit.is_set():
            try:
                await asyncio.wait_for(self.should_exit.wait(), tick)
            except asyncio.TimeoutError:
                self.notifier.watchdog()
                if loop.time() >= next_stats:
                    self.log_stats()
                    next_stats += interval

    async def shutdown(self) -> None:
        assert self.server is not None
        parts: ServerParts = self.server.cachenet
        self.notifier.stopping()
        await parts.health.enter_graceful_shutdown()  # every service NOT_SERVING
        parts.core.ready = False  # and the Open Inference Protocol's ServerReady says so
        if self.specializer_task is not None:
            if parts.specializer is not None:
                parts.specializer.stopping.set()  # a training step in a thread ends soon
            self.specializer_task.cancel()
            await asyncio.gather(self.specializer_task, return_exceptions=True)
        log.info("shutting down: draining in-flight requests (grace %.1f s)",
                 self.config.grace_s)
        if parts.generation is not None:
            parts.generation.close()  # generations take minutes: they end UNAVAILABLE
        await self.server.stop(self.config.grace_s)
        await parts.batcher.stop()
        if parts.generation is not None:
            await parts.generation.stop()
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.metrics is not None:
            self.metrics.close()
        self.log_stats()
        log.info("stopped")

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.should_exit.set)

    async def serve(self) -> None:
        self.install_signal_handlers()
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
