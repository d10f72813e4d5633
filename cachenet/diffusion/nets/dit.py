"""A small diffusion transformer (DiT, Peebles & Xie, 2023): patch embedding,
adaLN-Zero blocks, class-conditional, epsilon prediction.

Each block's two residual branches (attention and MLP) are callable on their
own (:meth:`Block.attn_branch`, :meth:`Block.mlp_branch`) and return the gated
update that the block adds to its input: what FORA and Learning-to-Cache keep
from one step and add again at a later one instead of computing it. Each
branch has its own modulation (the adaLN linear split in two), so a reused
branch costs nothing at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from cachenet.diffusion.nets.layers import AttentionCore, ConditionEmbedding


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 3
    image_size: int = 32
    patch: int = 2
    width: int = 192
    depth: int = 8
    heads: int = 3
    mlp_ratio: float = 4.0
    classes: int = 10

    def to_dict(self) -> dict:
        return asdict(self)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        hidden = int(width * mlp_ratio)
        self.attn = nn.ModuleDict({
            "ada": nn.Linear(width, 3 * width), "qkv": nn.Linear(width, 3 * width),
            "core": AttentionCore(), "proj": nn.Linear(width, width)})
        self.mlp = nn.ModuleDict({
            "ada": nn.Linear(width, 3 * width), "fc1": nn.Linear(width, hidden),
            "fc2": nn.Linear(hidden, width)})
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        for part in (self.attn, self.mlp):  # adaLN-Zero: every block starts as identity
            nn.init.zeros_(part["ada"].weight)
            nn.init.zeros_(part["ada"].bias)

    def attn_branch(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.attn["ada"](nn.functional.silu(c)).chunk(3, dim=1)
        n, length, width = x.shape
        q, k, v = self.attn["qkv"](_modulate(self.norm1(x), shift, scale)) \
            .reshape(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.attn["core"](q, k, v).transpose(1, 2).reshape(n, length, width)
        return gate[:, None] * self.attn["proj"](out)

    def mlp_branch(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.mlp["ada"](nn.functional.silu(c)).chunk(3, dim=1)
        h = self.mlp["fc1"](_modulate(self.norm2(x), shift, scale))
        return gate[:, None] * self.mlp["fc2"](nn.functional.gelu(h, approximate="tanh"))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_branch(x, c)
        return x + self.mlp_branch(x, c)


class DiT(nn.Module):
    kind = "dit"
    BRANCHES = ("attn", "mlp")

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.grid = cfg.image_size // cfg.patch
        self.patchify = nn.Conv2d(cfg.in_channels, cfg.width, cfg.patch, stride=cfg.patch)
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, cfg.width))
        nn.init.normal_(self.pos, std=0.02)
        self.embed = ConditionEmbedding(cfg.width, cfg.width, cfg.classes)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio)
                                    for _ in range(cfg.depth))
        self.final = nn.ModuleDict({
            "ada": nn.Linear(cfg.width, 2 * cfg.width),
            "norm": nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6),
            "out": nn.Linear(cfg.width, cfg.patch * cfg.patch * cfg.in_channels)})
        for m in (self.final["ada"], self.final["out"]):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def layers(self) -> int:
        """Cacheable layers: each block's attention and MLP branch."""
        return 2 * len(self.blocks)

    def units(self) -> list[str]:
        return (["patchify", "embed"]
                + [f"blocks.{i}.{b}" for i in range(len(self.blocks)) for b in self.BRANCHES]
                + ["final"])

    def begin(self, x: torch.Tensor, t: torch.Tensor,
              y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and the condition vector, before the blocks."""
        tokens = self.patchify(x).flatten(2).transpose(1, 2) + self.pos
        return tokens, self.embed(t, y)

    def end(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tokens after the blocks to predicted noise, N x C x H x W."""
        shift, scale = self.final["ada"](nn.functional.silu(c)).chunk(2, dim=1)
        out = self.final["out"](_modulate(self.final["norm"](h), shift, scale))
        p, g, ch = self.config.patch, self.grid, self.config.in_channels
        out = out.reshape(len(h), g, g, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(len(h), ch, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, c = self.begin(x, t, y)
        for block in self.blocks:
            h = block(h, c)
        return self.end(h, c)
