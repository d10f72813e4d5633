"""The noise schedule of DDPM (Ho et al., 2020), and the timesteps a sampler visits.

The forward process is ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with a
linear beta schedule over ``T = 1000`` training steps; the denoisers predict
``eps``. A sampler with ``S`` steps visits ``S`` of the ``T`` timesteps, evenly
spaced from ``T - 1`` down to 0 (the "trailing"-free uniform spacing of DDIM).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from cachenet.exceptions import ConfigError


@dataclass(frozen=True)
class NoiseSchedule:
    train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NoiseSchedule:
        return cls(int(d["train_steps"]), float(d["beta_start"]), float(d["beta_end"]))

    def alphas_cumprod(self) -> torch.Tensor:
        """``abar_t`` for t in [0, T), float64."""
        betas = torch.linspace(self.beta_start, self.beta_end, self.train_steps,
                               dtype=torch.float64)
        return torch.cumprod(1.0 - betas, 0)

    def timesteps(self, steps: int) -> list[int]:
        """The ``steps`` timesteps a sampler visits, from the noisiest down to 0."""
        if not 1 <= steps <= self.train_steps:
            raise ConfigError(f"steps must be in [1, {self.train_steps}], got {steps}")
        ts = np.round(np.linspace(self.train_steps - 1, 0, steps)).astype(int)
        return [int(t) for t in ts]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod().to(x0.device)[t].float().view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
