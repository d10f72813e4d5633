"""Pieces both denoisers share: timestep embeddings, attention, MAC profiles by unit.

A denoiser is cut into named *units* (``embed``, ``down.3``, ``blocks.2.attn``,
...): the step caches skip whole units, and :func:`unit_macs` says what each
costs, so a generation counts the multiply-adds it actually spent by adding up
the units it ran.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cachenet.toolchain.models.flops import macs_by_unit


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embeddings of (possibly fractional) timesteps, N -> N x dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device,
                                                            dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ConditionEmbedding(nn.Module):
    """Timestep and class label to one vector; label ``classes`` is "no class" (null)."""

    def __init__(self, base: int, dim: int, classes: int) -> None:
        super().__init__()
        self.base, self.classes = base, classes
        self.mlp = nn.Sequential(nn.Linear(base, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(classes + 1, dim)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.base)) + self.label(y)


class AttentionCore(nn.Module):
    """Scaled dot-product attention over (N, heads, L, d) tensors; its own module so
    that the MAC counter counts the two matrix products (:meth:`macs`)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)

    @staticmethod
    def macs(inputs: tuple, out: torch.Tensor) -> int:
        """One item's multiply-adds: Q K^T and the weights times V."""
        q, k = inputs[0], inputs[1]
        heads, lq, d = q.shape[1:]
        return 2 * heads * lq * k.shape[2] * d


def unit_macs(model: nn.Module, units: list[str], run: Callable[[], object]) -> dict[str, int]:
    """Multiply-adds per unit of one image's full forward pass: the MAC counter
    (:func:`cachenet.toolchain.models.flops.macs_by_unit`) over the denoiser's units."""
    return macs_by_unit(model, units, run)
