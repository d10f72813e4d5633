"""DeepCache (Ma et al., 2023): reuse a U-Net's deep features across adjacent steps.

At a *full* step the whole U-Net runs and the input of the up unit that takes
branch ``branch``'s skip (the deep features) is kept; at the steps between, only
the shallow path runs (:meth:`UNet.shallow`), fed the kept features. Full steps
come every ``interval`` steps (``uniform``), or, in the paper's non-uniform 1:N
strategy, denser around a ``center`` step and sparser away from it, placed by
a power law (``power``), the same number of them as the uniform strategy has.
``interval = 1`` runs every step in full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cachenet.diffusion.nets import DiffusionModel
from cachenet.diffusion.stepcache.base import StepCache, StepConfig, register, shown
from cachenet.exceptions import ConfigError

MODES = ("uniform", "nonuniform")
MAX_POWER = 4.0


@dataclass(frozen=True)
class DeepCacheConfig(StepConfig):
    interval: int = 3
    branch: int = 0
    mode: str = "uniform"
    center: float = 0.3  # non-uniform: the densest step, as a share of the steps
    power: float = 1.4  # non-uniform: how fast full steps thin out away from the centre


def nonuniform_steps(steps: int, count: int, center: int, power: float) -> list[int]:
    """``count`` full steps in [0, steps), step 0 among them, spaced as
    ``center + sign(u) |u| ** power`` for ``u`` evenly spaced: dense around
    ``center``. The power is lowered (by 0.02, down to 1) until the points are
    distinct, as in the paper's code."""
    count = max(1, min(count, steps))
    pts: set[int] = {0}
    for p in np.arange(power, 1.0 - 1e-9, -0.02):
        u = np.linspace(-(center ** (1 / p)), (steps - 1 - center) ** (1 / p), count)
        pts = {min(steps - 1, max(0, round(center + math.copysign(abs(v) ** p, v))))
               for v in u} | {0}
        if len(pts) >= count:
            break
    return sorted(pts)[:count]


@register
class DeepCache(StepCache):
    name = "deepcache"
    Config = DeepCacheConfig
    supports = ("unet",)

    def __init__(self, model: DiffusionModel, config: DeepCacheConfig, steps: int) -> None:
        super().__init__(model, config, steps)
        if config.mode == "uniform":
            self.full = {i for i in range(steps) if i % config.interval == 0}
        else:
            count = math.ceil(steps / config.interval)
            centre = round(config.center * (steps - 1))
            self.full = set(nonuniform_steps(steps, count, centre, config.power))
        self.full |= {i for i in range(steps) if self.forced_full(i)}
        self.deep: torch.Tensor | None = None

    @classmethod
    def check(cls, config: DeepCacheConfig) -> None:
        if config.interval < 1:
            raise ConfigError(f"deepcache: interval must be >= 1, got {config.interval}")
        if config.mode not in MODES:
            raise ConfigError(f"deepcache: mode must be one of {list(MODES)}, "
                              f"got {shown(config.mode)}")
        if not 0.0 <= config.center <= 1.0:
            raise ConfigError(f"deepcache: center must be in [0, 1], got {config.center}")
        if not 1.0 <= config.power <= MAX_POWER:
            raise ConfigError(f"deepcache: power must be in [1, {MAX_POWER}], "
                              f"got {config.power}")

    def check_model(self) -> None:
        super().check_model()
        branches = self.model.net.branches  # type: ignore[attr-defined]
        if not 0 <= self.config.branch < branches:
            raise ConfigError(f"deepcache: branch must be in [0, {branches - 1}] for this "
                              f"U-Net, got {self.config.branch}")

    def denoise(self, i: int, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        net = self.model.net
        if i in self.full or self.deep is None:
            eps, self.deep = net(x, t, y, keep=self.config.branch)
            self.ran(net.units())
            return eps
        self.ran(net.shallow_units(self.config.branch))
        return net.shallow(x, t, y, self.config.branch, self.deep)
