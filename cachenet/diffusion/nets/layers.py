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
    that :func:`unit_macs` counts the two matrix products."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


def _leaf_macs(m: nn.Module, inputs: tuple, out: torch.Tensor) -> int:
    """Multiply-adds of one call of a leaf module, for the first item of the batch."""
    if isinstance(m, nn.Conv2d):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        return int(out[0].numel()) * k
    if isinstance(m, nn.Linear):
        return int(out[0].numel()) * m.in_features
    if isinstance(m, AttentionCore):
        q, k = inputs[0], inputs[1]
        heads, lq, d = q.shape[1:]
        return 2 * heads * lq * k.shape[2] * d
    return 0


def unit_macs(model: nn.Module, units: list[str], run: Callable[[], object]) -> dict[str, int]:
    """Multiply-adds per unit of one image's full forward pass.

    Hooks every convolution, linear layer and attention core, runs ``run()`` (a
    full forward pass on a batch), and adds each leaf's count to the longest
    unit name that prefixes its qualified name. Every leaf must fall in a unit.
    """
    totals = dict.fromkeys(units, 0)
    by_len = sorted(units, key=len, reverse=True)
    handles = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear, AttentionCore)):
            continue
        owner = next((u for u in by_len if name == u or name.startswith(u + ".")), None)
        if owner is None:
            raise ValueError(f"module {name} lies in no unit of {units}")

        def hook(m: nn.Module, inp: tuple, out: torch.Tensor, owner: str = owner) -> None:
            totals[owner] += _leaf_macs(m, inp, out)

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return totals
