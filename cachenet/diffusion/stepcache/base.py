"""What a step cache is: a config, a registry, and a session per generation.

Step caches are the second family of cachenet's layer caches. The first
(:mod:`cachenet.layercache`) answers a classifier's request early from a cache
at a site inside the network; a step cache reuses what a site inside a
denoiser computed at an earlier denoising step instead of computing it again.
Its sites are the denoiser's units (a U-Net's skip branches, a DiT block's
attention and MLP).

A policy is a class with a ``name``, a ``Config`` dataclass built from request
parameters by :meth:`StepCache.configure` (which names a bad parameter), and
``denoise(i, x, t, y)``. An instance is a *session*: made for one generation
by :func:`open_session` and dropped after it, it holds whatever that
generation cached, so nothing carries over between requests (DeepCache's
reference code kept its cache on the pipeline, and a new prompt reused the last
one's features). Policies never change the model: they call its units.

A session counts what it ran: :attr:`StepCache.macs` is the multiply-adds per
image actually spent, and :meth:`StepCache.skipped` the share of the layers'
computation (the cacheable units') that the cache saved.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch

from cachenet.core.tensors import excerpt as shown
from cachenet.diffusion.nets import DiffusionModel
from cachenet.exceptions import ConfigError

#: The longest string parameter a policy takes (its names are short words).
MAX_STRING = 64


#: policy name -> class; each has ``Config`` and ``supports`` (the archs it works on).
POLICIES: dict[str, type[StepCache]] = {}


def register(cls: type[StepCache]) -> type[StepCache]:
    POLICIES[cls.name] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What every policy has: steps that always run in full, at either end."""

    full_first: int = 1
    full_last: int = 0


class StepCache:
    name: ClassVar[str] = "none"
    Config: ClassVar[type] = StepConfig
    supports: ClassVar[tuple[str, ...]] = ("unet", "dit")

    def __init__(self, model: DiffusionModel, config: Any, steps: int) -> None:
        self.model, self.config, self.steps = model, config, steps
        self._unit_macs = model.unit_macs()
        self.full_macs = sum(self._unit_macs.values())
        self._spent = 0
        self._skipped_layers = 0
        self._layer_macs = sum(v for k, v in self._unit_macs.items() if self.is_layer(k))
        self.calls = 0

    # --- configuration -------------------------------------------------------------
    @classmethod
    def configure(cls, params: dict[str, Any]) -> Any:
        """``Config`` from request parameters, each checked by name and type (numbers
        finite, strings short); what a policy bounds further, its :meth:`check` does."""
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        values: dict[str, Any] = {}
        for key, value in params.items():
            if key not in fields:
                raise ConfigError(f"policy '{cls.name}' has no parameter {shown(key)}; "
                                  f"parameters: {sorted(fields)}")
            default = fields[key].default
            want = type(default)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or isinstance(value, bool) != isinstance(default, bool):
                raise ConfigError(f"policy '{cls.name}' parameter '{key}' must be a "
                                  f"{want.__name__}, got {shown(value)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"policy '{cls.name}' parameter '{key}' must be finite, "
                                  f"got {value}")
            if isinstance(value, str) and len(value) > MAX_STRING:
                raise ConfigError(f"policy '{cls.name}' parameter '{key}' is longer than "
                                  f"{MAX_STRING} characters")
            values[key] = value
        config = cls.Config(**values)
        if config.full_first < 1 or config.full_last < 0:
            raise ConfigError(f"policy '{cls.name}': full_first must be >= 1 and "
                              f"full_last >= 0")
        cls.check(config)
        return config

    @classmethod
    def check(cls, config: Any) -> None:
        """Raise ConfigError naming a parameter out of range (policies override)."""

    def check_model(self) -> None:
        """Raise ConfigError where this model cannot run this policy (policies extend)."""
        if self.model.arch not in self.supports:
            raise ConfigError(f"policy '{self.name}' runs on {list(self.supports)}, "
                              f"not on a {self.model.arch}")

    # --- the generation ------------------------------------------------------------
    def forced_full(self, i: int) -> bool:
        return i < self.config.full_first or i >= self.steps - self.config.full_last

    def denoise(self, i: int, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.ran(self.model.net.units())
        return self.model.net(x, t, y)

    # --- accounting ----------------------------------------------------------------
    @staticmethod
    def is_layer(unit: str) -> bool:
        """Units a step cache may skip: everything but embeddings and the output head."""
        return unit not in ("embed", "patchify", "final", "out")

    def ran(self, units: list[str]) -> None:
        ran = sum(self._unit_macs[u] for u in units)
        self._spent += ran
        self._skipped_layers += self._layer_macs - sum(
            self._unit_macs[u] for u in units if self.is_layer(u))
        self.calls += 1

    @property
    def macs(self) -> int:
        """Multiply-adds per image spent so far."""
        return self._spent

    def skipped(self) -> float:
        """Share of the layers' multiply-adds skipped over the calls so far."""
        return self._skipped_layers / max(1, self._layer_macs * self.calls)


register(StepCache)


def open_session(model: DiffusionModel, policy: str, params: dict[str, Any],
                 steps: int) -> StepCache:
    """A fresh session of ``policy`` for one generation of ``steps`` steps."""
    if policy not in POLICIES:
        raise ConfigError(f"unknown cache policy {shown(policy)}; known: {sorted(POLICIES)}")
    cls = POLICIES[policy]
    session = cls(model, cls.configure(params), steps)
    session.check_model()
    return session
