"""The samplers solve the probability-flow ODE: on Gaussian data, where the noise
prediction and the ODE's end point have closed forms, they converge to it, DDIM at
first order and DPM-Solver++(2M) faster."""

from __future__ import annotations

import pytest
import torch

from cachenet.diffusion.samplers import SAMPLERS
from cachenet.diffusion.schedule import NoiseSchedule

MU, S = 0.1, 0.3  # data ~ N(MU, S^2), per pixel
SCHEDULE = NoiseSchedule()
ABAR = SCHEDULE.alphas_cumprod()


def exact_eps(_i: int, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[eps | x_t] for Gaussian data."""
    a = ABAR[t].view(-1, *([1] * (x.dim() - 1)))
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S * S + 1 - a)


@pytest.fixture(scope="module")
def start() -> tuple[torch.Tensor, torch.Tensor]:
    """Noise, and where the ODE takes it: the standardised x_t is constant along it."""
    x = torch.randn(500, 1, 2, 2, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64).clamp(-2.5, 2.5)
    a = ABAR[SCHEDULE.timesteps(1)[0]]
    return x, MU + S * (x - a.sqrt() * MU) / (a * S * S + 1 - a).sqrt()


def error(name: str, steps: int, start: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, want = start
    return float((SAMPLERS[name](exact_eps, x.clone(), SCHEDULE, steps) - want).abs().max())


def test_ddim_converges_at_first_order(start):
    e20, e40, e80 = (error("ddim", n, start) for n in (20, 40, 80))
    assert 1.6 < e20 / e40 < 2.4 and 1.6 < e40 / e80 < 2.4
    assert error("ddim", 500, start) < 0.01


def test_dpm_solver_2m_converges_faster_than_ddim(start):
    assert error("dpmpp-2m", 40, start) < error("ddim", 40, start) / 2
    assert error("dpmpp-2m", 80, start) < error("ddim", 80, start) / 10
    assert error("dpmpp-2m", 200, start) < 1e-3
