"""Samplers (the ``SAMPLERS`` registry): DDIM with eta = 0, and DPM-Solver++(2M).

A sampler walks ``steps`` timesteps of the model's schedule from pure noise to an
image in [-1, 1]. It asks for the noise prediction through ``denoise(i, x, t)``
(``i``: the step's index, 0 first; ``t``: the timestep, one per row), which is
where a step cache decides what to compute; it never calls the network itself.
Predicted clean images are clipped to [-1, 1] at every step.

* ``ddim`` (Song et al., 2021), deterministic;
* ``dpmpp-2m`` (Lu et al., 2022): second-order multistep in the data
  prediction; first-order at its first step and at its last solver step (the
  large jump in log-SNR to t = 0, where extrapolating from the step before is
  unstable), then the prediction of the clean image at t = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cachenet.diffusion.schedule import NoiseSchedule
from cachenet.exceptions import ConfigError

Denoise = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
OnStep = Callable[[int, int], None]


def _abar(schedule: NoiseSchedule, steps: int) -> tuple[list[int], list[float]]:
    ts = schedule.timesteps(steps)
    acp = schedule.alphas_cumprod()
    return ts, [float(acp[t]) for t in ts] + [1.0]


def _x0(x: torch.Tensor, eps: torch.Tensor, a: float) -> torch.Tensor:
    return ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, a: float, a_next: float) -> torch.Tensor:
    """One DDIM (eta = 0) step from ``abar = a`` to ``a_next``, the clean image clipped
    and the noise recomputed from it."""
    x0 = _x0(x, eps, a)
    eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
    return math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps


def ddim(denoise: Denoise, x: torch.Tensor, schedule: NoiseSchedule, steps: int,
         on_step: OnStep | None = None) -> torch.Tensor:
    ts, abar = _abar(schedule, steps)
    for i, t in enumerate(ts):
        eps = denoise(i, x, torch.full((len(x),), t, device=x.device, dtype=torch.long)).float()
        x = ddim_step(x, eps, abar[i], abar[i + 1])
        if on_step is not None:
            on_step(i + 1, steps)
    return x.clamp(-1, 1)


def dpmpp_2m(denoise: Denoise, x: torch.Tensor, schedule: NoiseSchedule, steps: int,
             on_step: OnStep | None = None) -> torch.Tensor:
    ts, abar = _abar(schedule, steps)
    alpha = [math.sqrt(a) for a in abar[:-1]]
    sigma = [math.sqrt(1 - a) for a in abar[:-1]]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma, strict=True)]
    prev: torch.Tensor | None = None
    for i, t in enumerate(ts):
        eps = denoise(i, x, torch.full((len(x),), t, device=x.device, dtype=torch.long)).float()
        x0 = _x0(x, eps, abar[i])
        if i == steps - 1:  # the last step lands on sigma = 0: the data prediction itself
            x = x0
        else:
            h = lam[i + 1] - lam[i]
            d = x0
            if prev is not None and i < steps - 2:  # the last solver step: first order
                r = (lam[i] - lam[i - 1]) / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev
            x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * math.expm1(-h) * d
        prev = x0
        if on_step is not None:
            on_step(i + 1, steps)
    return x.clamp(-1, 1)


#: sampler name -> function(denoise, x_T, schedule, steps, on_step) -> x_0
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddim": ddim, "dpmpp-2m": dpmpp_2m}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{name}'; known: {sorted(SAMPLERS)}")
    return SAMPLERS[name]
