"""Generation, transport-neutral: a request checked field by field, run through a
sampler and a step-cache session, answered with uint8 images and what they cost.

:class:`Generator` is the core the cloud's ``Generate`` RPC (and ``cachenet
generate --checkpoint``, and the benchmark) share: ``validate`` names the field a
request gets wrong (:class:`~cachenet.exceptions.ConfigError`), ``run`` makes
the images (``run_batch``: several requests in one sampler run), calls
``on_step(done, total)`` after every step and stops with
:class:`~cachenet.exceptions.GenerationStopped` when ``should_stop()`` says so.

Noise comes from a CPU generator seeded by the request, so a seed gives the same
images on any machine up to floating point; a new session of the step cache is
opened for every request. Classifier-free guidance (``guidance`` > 1) runs the
conditional and unconditional passes as one batch.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cachenet.diffusion.nets import DiffusionModel
from cachenet.diffusion.samplers import SAMPLERS, get_sampler
from cachenet.diffusion.stepcache import POLICIES, open_session
from cachenet.diffusion.stepcache.base import shown
from cachenet.exceptions import ConfigError, GenerationStopped

log = logging.getLogger(__name__)

MAX_COUNT = 64
MAX_STEPS = 1000
MAX_GUIDANCE = 20.0
#: The work one request may ask for: images x steps (x 2 with guidance).
MAX_IMAGE_STEPS = 64 * 250


def max_steps(model: DiffusionModel) -> int:
    return min(MAX_STEPS, model.schedule.train_steps)


@dataclass(frozen=True)
class GenerateRequest:
    model: str = ""  # empty: the generator's default model
    label: int | None = None  # a class, or None for unconditional samples
    count: int = 1
    seed: int = 0
    steps: int = 50
    sampler: str = "ddim"
    policy: str = "none"
    params: dict[str, Any] = field(default_factory=dict)
    guidance: float = 1.0


    def batch_key(self) -> tuple:
        """Requests with the same key can run as one batch: everything but the label,
        the count and the seed (each row keeps its own noise and class)."""
        return (self.model, self.steps, self.sampler, self.policy,
                tuple(sorted((k, repr(v)) for k, v in self.params.items())), self.guidance)


@dataclass
class Generation:
    images: np.ndarray  # uint8, N x C x H x W
    model: str
    steps: int
    macs: int  # multiply-adds per image spent
    macs_full: int  # what the same sampler spends per image without a step cache
    skipped: float  # share of the layers' computation the step cache saved
    compute_s: float
    batch_images: int = 0  # images in the batch this generation ran in (its own included)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] to uint8 in [0, 255]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def image_grid(images: np.ndarray, *, cols: int | None = None, pad: int = 2,
               scale: int = 1) -> np.ndarray:
    """uint8 N x C x H x W images as one H' x W' (x C) picture, ``cols`` to a row
    (default ceil(sqrt(N))), ``pad`` pixels apart, each pixel ``scale`` x ``scale``."""
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((c, rows * (h + pad) + pad, cols * (w + pad) + pad), np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = img
    grid = grid.repeat(scale, 1).repeat(scale, 2)
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The starting noise for a seed: the same on every machine."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def sample(model: DiffusionModel, request: GenerateRequest, *,
           on_step: Callable[[int, int], None] | None = None,
           x: torch.Tensor | None = None,
           labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
    """Run one (already valid) request: images in [-1, 1] and the finished session.

    ``x`` replaces the seeded starting noise and ``labels`` the request's one label
    (the benchmark feeds the same noise and a label per row to every policy)."""
    net = model.net
    device = next(net.parameters()).device
    n = request.count if x is None else len(x)
    if x is None:
        x = noise((n, *model.image_shape), request.seed)
    x = x.to(device)
    label = model.num_classes if request.label is None else request.label
    y = (torch.full((n,), label, dtype=torch.long) if labels is None else labels).to(device)
    session = open_session(model, request.policy, request.params, request.steps)
    guided = request.guidance != 1.0
    if guided:
        y = torch.cat([y, torch.full_like(y, model.num_classes)])

    def denoise(i: int, xi: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not guided:
            return session.denoise(i, xi, t, y)
        cond, uncond = session.denoise(i, torch.cat([xi, xi]), torch.cat([t, t]), y).chunk(2)
        return uncond + request.guidance * (cond - uncond)

    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16,
                                                enabled=device.type == "cuda"):
        out = get_sampler(request.sampler)(denoise, x, model.schedule, request.steps, on_step)
    return out, session


class Generator:
    """The models a server generates with, by name, and the one rule for a request."""

    def __init__(self, models: dict[str, DiffusionModel], default: str | None = None,
                 max_count: int = MAX_COUNT, max_image_steps: int = MAX_IMAGE_STEPS) -> None:
        if not models:
            raise ConfigError("a generator needs at least one diffusion model")
        self.models = models
        self.default = default or next(iter(models))
        if self.default not in models:
            raise ConfigError(f"default model '{self.default}' is not among {sorted(models)}")
        self.max_count = max_count
        self.max_image_steps = max_image_steps
        self._lock = threading.Lock()  # one generation at a time on the accelerator

    def model(self, name: str) -> DiffusionModel:
        key = name or self.default
        if key not in self.models:
            raise ConfigError(f"model: unknown diffusion model {shown(name)}; "
                              f"served: {sorted(self.models)}")
        return self.models[key]

    def validate(self, r: GenerateRequest) -> DiffusionModel:
        """The model the request names, or ConfigError naming the field at fault."""
        model = self.model(r.model)
        if r.label is not None and not 0 <= r.label < model.num_classes:
            raise ConfigError(f"label must be in [0, {model.num_classes - 1}] or unset, "
                              f"got {r.label}")
        if not 1 <= r.count <= self.max_count:
            raise ConfigError(f"count must be in [1, {self.max_count}], got {r.count}")
        if not 0 <= r.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2^63), got {r.seed}")
        if not 1 <= r.steps <= max_steps(model):
            raise ConfigError(f"steps must be in [1, {max_steps(model)}], got {r.steps}")
        if r.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {sorted(SAMPLERS)}, "
                              f"got {shown(r.sampler)}")
        if r.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {sorted(POLICIES)}, "
                              f"got {shown(r.policy)}")
        if not (0.0 <= r.guidance <= MAX_GUIDANCE):  # also refuses NaN
            raise ConfigError(f"guidance must be in [0, {MAX_GUIDANCE}], got {r.guidance}")
        work = r.count * r.steps * (2 if r.guidance != 1.0 else 1)
        if work > self.max_image_steps:
            raise ConfigError(f"count x steps (x2 with guidance) is {work}, more than the "
                              f"{self.max_image_steps} image-steps one request may ask for")
        open_session(model, r.policy, r.params, r.steps)  # checks the policy's parameters
        if r.policy == "l2c" and model.l2c and r.sampler != model.l2c.get("sampler", "ddim"):
            raise ConfigError(f"sampler: the l2c router was trained for "
                              f"{model.l2c.get('sampler')}, not {r.sampler}")
        return model

    def run(self, request: GenerateRequest, *,
            on_step: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Generation:
        return self.run_batch([request], on_step=on_step, should_stop=should_stop)[0]

    def run_batch(self, requests: list[GenerateRequest], *,
                  on_step: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> list[Generation]:
        """Requests with one :meth:`GenerateRequest.batch_key` as one batch through the
        sampler: each keeps its seed's noise and its label, and gets its own images."""
        if not requests or len({r.batch_key() for r in requests}) != 1:
            raise ConfigError("a batch needs requests that differ only in label, count, seed")
        model = self.validate(requests[0])
        for r in requests[1:]:
            self.validate(r)
        x = torch.cat([noise((r.count, *model.image_shape), r.seed) for r in requests])
        labels = torch.cat([torch.full((r.count,), model.num_classes if r.label is None
                                       else r.label, dtype=torch.long) for r in requests])

        def step(done: int, total: int) -> None:
            if should_stop is not None and should_stop():
                raise GenerationStopped(f"stopped after {done} of {total} steps")
            if on_step is not None:
                on_step(done, total)

        first = requests[0]
        with self._lock:
            started = time.perf_counter()
            out, session = sample(model, first, on_step=step, x=x, labels=labels)
            images = to_uint8(out)
            elapsed = time.perf_counter() - started
        passes = 2 if first.guidance != 1.0 else 1
        log.info("generated %d image(s) in %d request(s) with %s/%s in %.2fs (%.0f%% of "
                 "layers skipped)", len(x), len(requests), first.policy, first.sampler, elapsed,
                 100 * session.skipped())
        bounds = np.cumsum([0] + [r.count for r in requests])
        return [Generation(images[a:b], first.model or self.default, first.steps,
                           session.macs * passes, session.full_macs * first.steps * passes,
                           session.skipped(), elapsed, len(x))
                for a, b in itertools.pairwise(bounds)]
