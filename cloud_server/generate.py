"""The gRPC generation service: validate, queue onto the accelerator, stream progress.

A request is checked before it is queued (unknown fields, every field the
:class:`~cachenet.diffusion.generate.Generator` checks): a bad one gets
INVALID_ARGUMENT with the generator's message, which names the field. At most
``max_pending`` generations are admitted at once (the ones running included);
one more gets RESOURCE_EXHAUSTED. Generations run on a worker thread of their
own, so they never hold up the inference batcher, and are batched as the
inference batcher batches: when the worker is free it takes the oldest request
and every queued one that can share its sampler run (same model, steps,
sampler, policy, parameters and guidance: :meth:`GenerateRequest.batch_key`),
up to ``max_batch_images`` images; each keeps its own seed and label, and gets
its own images. Each step's progress crosses to the event loop through an
:class:`asyncio.Queue` and goes out on every member's stream. Between steps the
worker asks whether to stop: a member whose deadline passed (DEADLINE_EXCEEDED)
or whose caller left (CANCELLED) drops out of the batch, which stops when all
have, or when the server shuts down (UNAVAILABLE). Every request gets an answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path

import grpc
import numpy as np
import torch

from cachenet.core import tensors
from cachenet.diffusion.generate import (
    MAX_GUIDANCE,
    GenerateRequest,
    Generation,
    Generator,
    max_steps,
)
from cachenet.diffusion.nets import DiffusionModel, load_checkpoint
from cachenet.diffusion.samplers import SAMPLERS
from cachenet.diffusion.stepcache import POLICIES
from cachenet.exceptions import ConfigError, GenerationStopped, ProtocolError, RequestRefused
from cachenet.protocol.client import from_param, to_param
from cachenet.protocol.v1 import generate_pb2 as gpb
from cachenet.protocol.v1 import generate_pb2_grpc as gpb_grpc  # the servicer base class
from cachenet.protocol.v1 import inference_pb2 as pb
from cloud_server.config import MAX_GENERATIONS
from cloud_server.inference import refusal
from cloud_server.wire import Undecodable, abort, lenient_parser, reject_unknown_fields

log = logging.getLogger(__name__)

SERVICE_NAME = gpb.DESCRIPTOR.services_by_name["GenerationService"].full_name
#: Generations admitted at once by default (the one running included).
MAX_PENDING = MAX_GENERATIONS
#: Longest request id (echoed in every progress message), name, and params map.
MAX_ID, MAX_NAME, MAX_PARAMS = 128, 64, 16


def load_generator(paths: dict[str, Path], device: str | None = None, *,
                   max_count: int | None = None, max_image_steps: int | None = None
                   ) -> Generator:
    """A generator over the checkpoints ``paths`` (name -> file), on ``device`` (default:
    CUDA when available); the first name is the default model."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = {name: load_checkpoint(path).to(dev) for name, path in paths.items()}
    for name, m in models.items():
        log.info("diffusion model %s on %s: %s, %s, %d classes, l2c router %s", name, dev,
                 m.arch, "x".join(map(str, m.image_shape)), m.num_classes,
                 f"for {m.l2c.get('steps')} steps" if m.l2c else "none")
    kwargs = {k: v for k, v in (("max_count", max_count), ("max_image_steps", max_image_steps))
              if v is not None}
    return Generator(models, **kwargs)


def _check_sizes(request: gpb.GenerateRequest) -> None:
    """Strings and maps from the network are short before anything echoes or keeps them."""
    for name, limit in (("id", MAX_ID), ("model_name", MAX_NAME), ("sampler", MAX_NAME),
                        ("policy", MAX_NAME)):
        if len(getattr(request, name)) > limit:
            raise ProtocolError(f"{name} is longer than {limit} characters")
    if len(request.params) > MAX_PARAMS:
        raise ProtocolError(f"params has {len(request.params)} entries; at most {MAX_PARAMS}")
    for key in request.params:
        if len(key) > MAX_NAME:
            raise ProtocolError(f"a params key is longer than {MAX_NAME} characters")


def parse_request(request: gpb.GenerateRequest | Undecodable) -> GenerateRequest:
    """The transport-neutral request, or RequestRefused (INVALID_ARGUMENT) saying why not."""
    if isinstance(request, Undecodable):
        raise RequestRefused("INVALID_ARGUMENT", request.reason, reason="undecodable")
    try:
        _check_sizes(request)
        reject_unknown_fields(request, "GenerateRequest")
        params = {}
        for key, p in request.params.items():
            reject_unknown_fields(p, f"GenerateRequest.params['{key}']")
            if (value := from_param(p)) is None:
                raise ProtocolError(f"params['{key}'] has no value")
            params[key] = value
    except ProtocolError as exc:
        raise refusal(exc) from None
    return GenerateRequest(
        model=request.model_name,
        label=request.label if request.HasField("label") else None,
        count=request.count, seed=request.seed, steps=request.steps,
        sampler=request.sampler or GenerateRequest.sampler,
        policy=request.policy or GenerateRequest.policy, params=params,
        guidance=request.guidance if request.HasField("guidance") else 1.0)


def policies_for(model: DiffusionModel) -> list[str]:
    """The policies ``model`` can run: its arch's, and l2c only with a router."""
    return [name for name, cls in sorted(POLICIES.items())
            if model.arch in cls.supports and (name != "l2c" or model.l2c is not None)]


def model_info(name: str, m: DiffusionModel) -> gpb.DiffusionModelInfo:
    router = m.l2c or {}
    device = next(m.net.parameters()).device
    return gpb.DiffusionModelInfo(
        name=name, arch=m.arch, image_shape=list(m.image_shape), classes=m.classes,
        policies=policies_for(m), l2c_router=m.l2c is not None,
        l2c_steps=int(router.get("steps", 0)), l2c_sampler=str(router.get("sampler", "")),
        max_steps=max_steps(m), device=str(device))


def policy_info(name: str) -> gpb.PolicyInfo:
    cls = POLICIES[name]
    defaults = {f.name: to_param(f.default) for f in dataclasses.fields(cls.Config)}
    return gpb.PolicyInfo(name=name, archs=list(cls.supports), defaults=defaults)


def result_message(request_id: str, gen: Generation, queue_s: float,
                   received: float) -> gpb.GenerateResponse:
    dtype, shape, raw = tensors.encode(np.ascontiguousarray(gen.images))
    timings = gpb.GenerateTimings(
        queue_us=int(queue_s * 1e6), compute_us=int(gen.compute_s * 1e6),
        total_us=int((time.perf_counter() - received) * 1e6), macs_per_image=gen.macs,
        macs_full_per_image=gen.macs_full, layers_skipped=gen.skipped, steps=gen.steps,
        batch_images=gen.batch_images)
    return gpb.GenerateResponse(id=request_id, result=gpb.GenerateResult(
        images=pb.Tensor(dtype=dtype, shape=shape, raw_data=raw), model_name=gen.model,
        timings=timings))


@dataclasses.dataclass
class Stopper:
    """Whether a generation should stop, asked from its worker between steps."""

    deadline: float | None  # time.monotonic() at which the call's deadline passes
    closing: threading.Event  # the server is shutting down
    left: threading.Event = dataclasses.field(default_factory=threading.Event)  # caller gone

    def expired(self, slack: float = 0.0) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline - slack

    def __call__(self) -> bool:
        return self.left.is_set() or self.closing.is_set() or self.expired()

    def status(self) -> str:
        """Why it stopped, as a status code name; gRPC's own timer may end the call a hair
        before our clock."""
        if self.expired(slack=0.05):
            return "DEADLINE_EXCEEDED"
        if self.closing.is_set():
            return "UNAVAILABLE"
        return "CANCELLED"


@dataclasses.dataclass
class Job:
    """One admitted request, waiting for (or in) a batch on the worker."""

    req: GenerateRequest
    stop: Stopper
    on_step: Callable[[int, int], None]
    future: cf.Future
    queued: float = dataclasses.field(default_factory=time.perf_counter)


class GenerationService(gpb_grpc.GenerationServiceServicer):
    def __init__(self, generator: Generator, *, max_pending: int = MAX_PENDING,
                 max_batch_images: int | None = None) -> None:
        if max_pending < 1:
            raise ConfigError(f"max_pending must be at least 1, got {max_pending}")
        self.generator = generator
        self.max_pending = max_pending
        self.max_batch_images = max_batch_images or generator.max_count
        self._pending = 0  # admitted, queued or running; a future's callback lowers it
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._jobs: deque[Job] = deque()
        self._ready = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="generate", daemon=True)
        self._worker.start()
        self.counts = {"received": 0, "ok": 0, "invalid": 0, "overloaded": 0, "deadline": 0,
                       "cancelled": 0, "unavailable": 0, "error": 0, "batches": 0,
                       "batched": 0}
        for m in generator.models.values():
            m.unit_macs()  # measured once, here: validation then never runs the model

    def check(self, request: gpb.GenerateRequest | Undecodable) -> GenerateRequest:
        req = parse_request(request)
        try:
            self.generator.validate(req)
        except ConfigError as exc:
            raise RequestRefused("INVALID_ARGUMENT", str(exc), reason="invalid_request") \
                from None
        return req

    @property
    def pending(self) -> int:
        """Generations admitted and not yet finished (queued or running)."""
        return self._pending

    def _admit(self) -> None:
        with self._lock:
            if self._pending >= self.max_pending:
                raise RequestRefused("RESOURCE_EXHAUSTED", f"{self.max_pending} generations "
                                     "are queued or running; try again later",
                                     reason="queue_full")
            self._pending += 1

    def _release(self, _: object = None) -> None:
        with self._lock:
            self._pending -= 1

    def submit(self, req: GenerateRequest, stop: Stopper,
               on_step: Callable[[int, int], None]) -> cf.Future:
        """Queue ``req`` for the worker; RESOURCE_EXHAUSTED when ``max_pending`` are in.
        The future ends with ``(Generation, seconds queued)``."""
        self._admit()
        future: cf.Future = cf.Future()
        future.add_done_callback(self._release)
        job = Job(req, stop, on_step, future)
        future.add_done_callback(lambda f: self._discard(job) if f.cancelled() else None)
        with self._ready:
            if self._closing.is_set():
                future.cancel()
                raise RequestRefused("UNAVAILABLE", "the server is shutting down",
                                     reason="shutting_down")
            self._jobs.append(job)
            self._ready.notify()
        return future

    def _discard(self, job: Job) -> None:
        """A cancelled job leaves the queue at once (its caller is gone)."""
        with self._ready:
            if job in self._jobs:
                self._jobs.remove(job)

    def _take(self) -> list[Job] | None:
        """The oldest job and the queued ones that can share its run; None when closing."""
        with self._ready:
            while not self._jobs and not self._closing.is_set():
                self._ready.wait()
            if self._closing.is_set():
                return None
            first = self._jobs.popleft()
            batch, images, key = [first], first.req.count, first.req.batch_key()
            for job in list(self._jobs):
                if job.future.done():
                    self._jobs.remove(job)
                elif (job.req.batch_key() == key
                      and images + job.req.count <= self.max_batch_images):
                    self._jobs.remove(job)
                    batch.append(job)
                    images += job.req.count
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            for j in [j for j in live if j.stop()]:
                j.future.set_exception(GenerationStopped("stopped before it started"))
            run = [j for j in live if not j.future.done()]
            if run:
                self._run(run)
        with self._ready:  # closing: what is still queued never starts
            while self._jobs:
                self._jobs.popleft().future.cancel()

    def _run(self, run: list[Job]) -> None:
        started = time.perf_counter()

        def on_step(done: int, total: int) -> None:
            for j in run:
                if not j.stop():
                    j.on_step(done, total)

        try:
            gens = self.generator.run_batch([j.req for j in run], on_step=on_step,
                                            should_stop=lambda: all(j.stop() for j in run))
        except Exception as exc:  # each member's call answers it (INTERNAL)
            for j in run:
                j.future.set_exception(exc)
            return
        self.counts["batches"] += 1
        self.counts["batched"] += len(run)
        for j, gen in zip(run, gens, strict=True):
            if j.stop():
                j.future.set_exception(GenerationStopped("stopped; its batch went on"))
            else:
                j.future.set_result((gen, started - j.queued))

    async def _generate(self, request: gpb.GenerateRequest | Undecodable, stop: Stopper
                        ) -> AsyncIterator[gpb.GenerateResponse]:
        received = time.perf_counter()
        request_id = "" if isinstance(request, Undecodable) else request.id
        req = self.check(request)
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()

        def on_step(done: int, total: int) -> None:
            loop.call_soon_threadsafe(steps.put_nowait, (done, total))

        future = self.submit(req, stop, on_step)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(steps.put_nowait, None))
        try:
            while (step := await steps.get()) is not None:
                yield gpb.GenerateResponse(id=request_id, progress=gpb.GenerateProgress(
                    done=step[0], total=step[1]))
            # Done: its callback queued the None after every step the worker queued.
            if future.cancelled():
                raise RequestRefused(stop.status(), "generation dropped before it started",
                                     reason="stopped")
            try:
                gen, waited = future.result()
            except GenerationStopped as exc:
                raise RequestRefused(stop.status(), f"generation {exc}", reason="stopped") \
                    from None
            yield result_message(request_id, gen, waited, received)
        finally:
            stop.left.set()  # a no-op once it finished; stops it if the caller left
            future.cancel()  # a generation not yet started never starts

    async def Generate(self, request: gpb.GenerateRequest | Undecodable,
                       context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[gpb.GenerateResponse]:
        self.counts["received"] += 1
        remaining = context.time_remaining()
        stop = Stopper(None if remaining is None else time.monotonic() + remaining,
                       self._closing)
        try:
            async with aclosing(self._generate(request, stop)) as messages:
                async for message in messages:
                    yield message
            self.counts["ok"] += 1
        except RequestRefused as exc:
            self._count(exc.code)
            await abort(context, exc)
        except asyncio.CancelledError:  # gRPC ended the call: deadline, or the caller left
            self._count(stop.status())
            raise
        except Exception as exc:  # a bug answers INTERNAL, not silence
            self.counts["error"] += 1
            log.exception("generation failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {exc}")

    def _count(self, code: str) -> None:
        key = {"INVALID_ARGUMENT": "invalid", "RESOURCE_EXHAUSTED": "overloaded",
               "DEADLINE_EXCEEDED": "deadline", "CANCELLED": "cancelled",
               "UNAVAILABLE": "unavailable"}.get(code, "error")
        self.counts[key] += 1

    async def GetGeneratorInfo(self, request: gpb.GeneratorInfoRequest | Undecodable,
                               context: grpc.aio.ServicerContext) -> gpb.GeneratorInfo:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        g = self.generator
        return gpb.GeneratorInfo(
            models=[model_info(name, m) for name, m in g.models.items()],
            default_model=g.default, samplers=sorted(SAMPLERS),
            policies=[policy_info(name) for name in sorted(POLICIES)], max_count=g.max_count,
            max_guidance=MAX_GUIDANCE, max_image_steps=g.max_image_steps)

    def close(self) -> None:
        """Refuse new generations, stop the running one at its next step (UNAVAILABLE:
        the caller may retry elsewhere), and drop the queued ones."""
        with self._ready:
            self._closing.set()
            self._ready.notify_all()

    async def stop(self) -> None:
        """:meth:`close`, then wait for the worker."""
        self.close()
        await asyncio.to_thread(self._worker.join)


def add_to_server(service: GenerationService, server: grpc.aio.Server) -> None:
    """Register ``service`` like the generated helper, but parse requests leniently."""
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            service.Generate, request_deserializer=lenient_parser(gpb.GenerateRequest),
            response_serializer=gpb.GenerateResponse.SerializeToString),
        "GetGeneratorInfo": grpc.unary_unary_rpc_method_handler(
            service.GetGeneratorInfo,
            request_deserializer=lenient_parser(gpb.GeneratorInfoRequest),
            response_serializer=gpb.GeneratorInfo.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                          handlers),))
