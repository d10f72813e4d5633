"""FORA (Selvaraju et al., 2024), the static baseline for diffusion transformers:
every block's attention and MLP outputs, computed at a full step, are reused for
the ``interval - 1`` steps after it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachenet.diffusion.nets import DiffusionModel
from cachenet.diffusion.stepcache.base import StepCache, StepConfig, register
from cachenet.exceptions import ConfigError


@dataclass(frozen=True)
class ForaConfig(StepConfig):
    interval: int = 2


class BranchCache(StepCache):
    """A DiT run branch by branch, each either computed (and kept) or taken from the
    cache; subclasses say which to reuse at step ``i`` (:meth:`reuse`)."""

    supports = ("dit",)

    def __init__(self, model: DiffusionModel, config: StepConfig, steps: int) -> None:
        super().__init__(model, config, steps)
        self.kept: dict[tuple[int, str], torch.Tensor] = {}

    def reuse(self, i: int) -> frozenset[tuple[int, str]]:
        raise NotImplementedError

    def denoise(self, i: int, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        net = self.model.net
        reuse = frozenset() if self.forced_full(i) else self.reuse(i)
        h, c = net.begin(x, t, y)
        units = ["patchify", "embed", "final"]
        for b, block in enumerate(net.blocks):
            for branch, fn in (("attn", block.attn_branch), ("mlp", block.mlp_branch)):
                key = (b, branch)
                if key in reuse and key in self.kept:
                    h = h + self.kept[key]
                    continue
                out = fn(h, c)
                self.kept[key] = out
                units.append(f"blocks.{b}.{branch}")
                h = h + out
        self.ran(units)
        return net.end(h, c)


@register
class Fora(BranchCache):
    name = "fora"
    Config = ForaConfig

    @classmethod
    def check(cls, config: ForaConfig) -> None:
        if config.interval < 1:
            raise ConfigError(f"fora: interval must be >= 1, got {config.interval}")

    def reuse(self, i: int) -> frozenset[tuple[int, str]]:
        if i % self.config.interval == 0:
            return frozenset()
        return frozenset((b, br) for b in range(len(self.model.net.blocks))
                         for br in ("attn", "mlp"))
