"""Denoisers (the ``DENOISERS`` registry) and their checkpoints.

A checkpoint is one ``torch.save`` file, loaded with ``weights_only=True``::

    {"format": "cachenet-diffusion/1", "arch": "unet" | "dit", "config": {...},
     "schedule": {...}, "classes": [...], "state_dict": {... fp16 ...},
     "meta": {...}, "l2c": {...} | None}

``l2c`` holds a Learning-to-Cache router trained for the model (see
:mod:`cachenet.diffusion.stepcache.l2c`): it travels with the weights it was
learned for. Images are scaled to [-1, 1] inside a denoiser's world; the
generator maps them back to uint8.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cachenet.diffusion.nets.dit import DiT, DiTConfig
from cachenet.diffusion.nets.layers import unit_macs
from cachenet.diffusion.nets.unet import UNet, UNetConfig
from cachenet.diffusion.schedule import NoiseSchedule
from cachenet.exceptions import ModelError

FORMAT = "cachenet-diffusion/1"

#: arch name -> (model class, config dataclass)
DENOISERS: dict[str, tuple[type[nn.Module], type]] = {
    "unet": (UNet, UNetConfig),
    "dit": (DiT, DiTConfig),
}


def build(arch: str, **overrides: object) -> nn.Module:
    """A freshly initialised denoiser of ``arch``, its config's defaults overridden."""
    if arch not in DENOISERS:
        raise ModelError(f"unknown denoiser '{arch}'; known: {sorted(DENOISERS)}")
    cls, config_cls = DENOISERS[arch]
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ModelError(f"{arch} has no option(s) {unknown}; options: {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return cls(config_cls(**values))


@dataclass
class DiffusionModel:
    """A denoiser with everything needed to sample from it."""

    net: nn.Module
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    classes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    l2c: dict | None = None
    _macs: dict[str, int] | None = None

    @property
    def arch(self) -> str:
        return self.net.kind  # type: ignore[return-value]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        cfg = self.net.config  # type: ignore[attr-defined]
        return (cfg.in_channels, cfg.image_size, cfg.image_size)

    @property
    def num_classes(self) -> int:
        return int(self.net.config.classes)  # type: ignore[attr-defined]

    def unit_macs(self) -> dict[str, int]:
        """Multiply-adds of each unit of one image's forward pass (measured once)."""
        if self._macs is None:
            p = next(self.net.parameters())
            x = torch.zeros(1, *self.image_shape, device=p.device)
            t = torch.zeros(1, dtype=torch.long, device=p.device)
            y = torch.full((1,), self.num_classes, dtype=torch.long, device=p.device)
            self._macs = unit_macs(self.net, self.net.units(), lambda: self.net(x, t, y))
        return self._macs

    def to(self, device: torch.device | str) -> DiffusionModel:
        self.net.to(device)
        return self


def save_checkpoint(path: Path, model: DiffusionModel) -> None:
    cfg = model.net.config  # type: ignore[attr-defined]
    blob = {"format": FORMAT, "arch": model.arch, "config": cfg.to_dict(),
            "schedule": model.schedule.to_dict(), "classes": list(model.classes),
            "state_dict": {k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()
                           for k, v in model.net.state_dict().items()},
            "meta": model.meta, "l2c": model.l2c}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str) -> DiffusionModel:
    """A checkpoint written by :func:`save_checkpoint`, or ModelError saying what is wrong."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"no diffusion checkpoint at {path}") from None
    except Exception as exc:
        raise ModelError(f"{path} is not a readable diffusion checkpoint: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelError(f"{path} is not a {FORMAT} checkpoint")
    for key, kind in (("arch", str), ("config", dict), ("schedule", dict),
                      ("state_dict", dict), ("classes", list)):
        if not isinstance(blob.get(key), kind):
            raise ModelError(f"{path}: field '{key}' must be a {kind.__name__}")
    try:
        net = build(blob["arch"], **blob["config"])
        net.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in blob["state_dict"].items()})
        schedule = NoiseSchedule.from_dict(blob["schedule"])
    except ModelError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: weights or schedule do not fit the model: {exc}") from exc
    l2c = blob.get("l2c")
    if l2c is not None and not isinstance(l2c, dict):
        raise ModelError(f"{path}: field 'l2c' must be a dict or absent")
    return DiffusionModel(net.eval(), schedule, [str(c) for c in blob["classes"]],
                          dict(blob.get("meta") or {}), l2c)


__all__ = ["DENOISERS", "DiT", "DiTConfig", "DiffusionModel", "UNet", "UNetConfig", "build",
           "load_checkpoint", "save_checkpoint"]
