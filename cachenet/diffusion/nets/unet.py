"""A small DDPM U-Net (Ho et al., 2020): epsilon prediction, class-conditional.

The network is laid out flat, as DeepCache (Ma et al., 2023) reads it: ``down``
is a list of units each of which leaves one skip connection (the input
convolution, every residual block, every downsampling), ``up`` a list of units
each of which takes one skip (concatenated to its input) and may upsample after
itself. Up unit ``j`` takes the skip of down unit ``len(down) - 1 - j``.

*Branch* ``b`` of DeepCache is the skip of down unit ``b``: the shallow path of
that branch runs down units ``0..b`` and up units ``len(up) - 1 - b`` to the end,
and takes the input of the first of those up units (the deep features) from the
last full step. :meth:`UNet.forward` keeps that input when asked
(``keep=b``), and :meth:`UNet.shallow` runs the shallow path; at the same input
the two compute the same output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cachenet.diffusion.nets.layers import AttentionCore, ConditionEmbedding


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 3
    image_size: int = 32
    channels: int = 48
    mults: tuple[int, ...] = (1, 2, 2)
    blocks: int = 2  # residual blocks per level going down (one more going up)
    attn_at: tuple[int, ...] = (16,)  # resolutions with self-attention
    classes: int = 10
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


def _norm(c: int) -> nn.GroupNorm:
    """Group norm with the most groups (at most 32) that divide ``c``."""
    return nn.GroupNorm(max(g for g in range(1, 33) if c % g == 0), c)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    def __init__(self, c: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.norm, self.qkv = _norm(c), nn.Conv2d(c, 3 * c, 1)
        self.core, self.proj = AttentionCore(), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w) \
            .permute(1, 0, 2, 4, 3).unbind(0)
        out = self.core(q, k, v).permute(0, 1, 3, 2).reshape(n, c, h, w)
        return x + self.proj(out)


class Unit(nn.Module):
    """A residual block with optional attention, or a plain layer (``op``), then an
    optional resampling."""

    def __init__(self, block: nn.Module | None, attn: nn.Module | None = None,
                 op: nn.Module | None = None, resample: nn.Module | None = None) -> None:
        super().__init__()
        self.block, self.attn, self.op, self.resample = block, attn, op, resample

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.op(x) if self.op is not None else self.block(x, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.resample is not None:
            h = self.resample(h)
        return h


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    kind = "unet"

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        c0, emb = cfg.channels, cfg.channels * 4
        self.embed = ConditionEmbedding(c0, emb, cfg.classes)
        down: list[nn.Module] = [Unit(None, op=nn.Conv2d(cfg.in_channels, c0, 3, padding=1))]
        widths, c, res = [c0], c0, cfg.image_size
        for level, mult in enumerate(cfg.mults):
            for _ in range(cfg.blocks):
                attn = SelfAttention2d(c0 * mult) if res in cfg.attn_at else None
                down.append(Unit(ResBlock(c, c0 * mult, emb, cfg.dropout), attn))
                c = c0 * mult
                widths.append(c)
            if level < len(cfg.mults) - 1:
                down.append(Unit(None, op=nn.Conv2d(c, c, 3, stride=2, padding=1)))
                widths.append(c)
                res //= 2
        self.down = nn.ModuleList(down)
        self.mid = nn.ModuleList([ResBlock(c, c, emb, cfg.dropout), SelfAttention2d(c),
                                  ResBlock(c, c, emb, cfg.dropout)])
        up: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(cfg.mults))):
            for i in range(cfg.blocks + 1):
                skip = widths.pop()
                attn = SelfAttention2d(c0 * mult) if res in cfg.attn_at else None
                last = i == cfg.blocks and level > 0
                up.append(Unit(ResBlock(c + skip, c0 * mult, emb, cfg.dropout), attn,
                               resample=Upsample(c0 * mult) if last else None))
                c = c0 * mult
            res *= 2
        self.up = nn.ModuleList(up)
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def branches(self) -> int:
        """How many skip branches DeepCache can cache at (``0..branches - 1``)."""
        return len(self.down)

    def units(self) -> list[str]:
        return (["embed"] + [f"down.{i}" for i in range(len(self.down))] + ["mid"]
                + [f"up.{j}" for j in range(len(self.up))] + ["out"])

    def _up_from(self, j: int, h: torch.Tensor, skips: list[torch.Tensor],
                 emb: torch.Tensor) -> torch.Tensor:
        for unit in self.up[j:]:
            h = unit(torch.cat([h, skips.pop()], 1), emb)
        return self.out(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                keep: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predicted noise; with ``keep=b`` also the deep features of branch ``b``."""
        emb = self.embed(t, y)
        h, skips = x, []
        for unit in self.down:
            h = unit(h, emb)
            skips.append(h)
        h = self.mid[0](h, emb)
        h = self.mid[2](self.mid[1](h), emb)
        stop = len(self.up) - 1 - keep if keep is not None else len(self.up)
        for unit in self.up[:stop]:
            h = unit(torch.cat([h, skips.pop()], 1), emb)
        if keep is None:
            return self.out(h)
        return self._up_from(stop, h, skips, emb), h

    def shallow(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, branch: int,
                deep: torch.Tensor) -> torch.Tensor:
        """DeepCache's partial inference: down units ``0..branch``, then the up path
        from the unit that takes that branch's skip, fed the cached ``deep`` features."""
        emb = self.embed(t, y)
        h, skips = x, []
        for unit in self.down[:branch + 1]:
            h = unit(h, emb)
            skips.append(h)
        return self._up_from(len(self.up) - 1 - branch, deep, skips, emb)

    def shallow_units(self, branch: int) -> list[str]:
        return (["embed"] + [f"down.{i}" for i in range(branch + 1)]
                + [f"up.{j}" for j in range(len(self.up) - 1 - branch, len(self.up))] + ["out"])
