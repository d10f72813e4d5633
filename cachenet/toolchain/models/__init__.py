"""Model registry: build a model from a :class:`ModelSpec`, load users' own models.

A spec names an architecture and its keyword arguments; it is stored next to
every checkpoint so that the cloud server can rebuild the exact model. The
architecture is a registered name (:data:`ARCHITECTURES`) or a user's import
string ``package.module:factory`` (called with the spec's kwargs). A user's
model receives the [0, 1] NCHW tensor as it is and owns its preprocessing;
ours start with a :class:`~cachenet.toolchain.models.layers.Normalize` layer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cachenet.exceptions import ModelError
from cachenet.toolchain.models.cache import MLP, TinyCNN
from cachenet.toolchain.models.flops import count_macs
from cachenet.toolchain.models.resnet import TTA_MODES, ResNet, resnet18, resnet20

__all__ = ["ARCHITECTURES", "TTA_MODES", "ModelSpec", "build_model", "count_macs",
           "for_inference", "load_checkpoint", "load_torchscript", "save_checkpoint"]


def _mlp(*, in_channels: int, num_classes: int, mean: Any, std: Any, image_size: int,
         image_width: int | None = None, hidden: Any = (64,)) -> MLP:
    features = in_channels * image_size * (image_width or image_size)
    return MLP(in_features=features, num_classes=num_classes, mean=mean, std=std,
               hidden=tuple(hidden))


def _tinycnn(*, in_channels: int, num_classes: int, mean: Any, std: Any,
             image_size: int | None = None, image_width: int | None = None,
             widths: Any = (12, 24, 48), depth: int = 1) -> TinyCNN:
    return TinyCNN(in_channels=in_channels, num_classes=num_classes, mean=mean, std=std,
                   widths=tuple(widths), depth=depth)


def _resnet(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(*, in_channels: int, num_classes: int, mean: Any, std: Any,
              image_size: int | None = None, tta: str = "none") -> nn.Module:
        return factory(in_channels=in_channels, num_classes=num_classes, mean=mean, std=std,
                       tta=tta)
    return build


def _resnet8(*, in_channels: int, num_classes: int, mean: Any, std: Any,
             image_size: int | None = None, image_width: int | None = None,
             widths: Any = (12, 24, 48)) -> nn.Module:
    """A cache model for devices that can afford ~8 M multiply-adds (a Raspberry Pi 4
    class CPU runs it in a few milliseconds): one basic block per stage."""
    return ResNet((1, 1, 1), tuple(widths), in_channels=in_channels, num_classes=num_classes,
                  mean=mean, std=std)


#: Registered architectures and the roles each is meant for: ``full``, a cloud model;
#: ``cache``, an edge model. ResNet-20 (41 M multiply-adds on CIFAR) is both: the default
#: full model, and the strong cache model for devices of a Raspberry Pi 5's class.
ARCHITECTURES: dict[str, tuple[frozenset[str], Callable[..., nn.Module]]] = {
    "resnet20": (frozenset({"full", "cache"}), _resnet(resnet20)),
    "resnet18": (frozenset({"full"}), _resnet(resnet18)),
    "tinycnn": (frozenset({"cache"}), _tinycnn),
    "resnet8": (frozenset({"cache"}), _resnet8),
    "mlp": (frozenset({"cache"}), _mlp),
}


@dataclass
class ModelSpec:
    """An architecture (registered name or ``package.module:factory``) and its kwargs."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(arch=d["arch"], kwargs=dict(d.get("kwargs", {})))


def _import_factory(target: str) -> Callable[..., nn.Module]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ModelError(f"'{target}' is not an import string of the form package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import module '{module_name}' for '{target}': {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"'{target}': module '{module_name}' has no callable '{attr}'")
    return factory


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate ``spec`` with freshly initialised weights."""
    if spec.arch in ARCHITECTURES:
        factory = ARCHITECTURES[spec.arch][1]
    elif ":" in spec.arch:
        factory = _import_factory(spec.arch)
    else:
        raise ModelError(f"unknown architecture '{spec.arch}'; known: "
                         f"{', '.join(sorted(ARCHITECTURES))}, or package.module:factory")
    try:
        model = factory(**spec.kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build '{spec.arch}' with {sorted(spec.kwargs)}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"'{spec.arch}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def for_inference(model: nn.Module, device: str | torch.device | None = None, *,
                  fold: bool = False) -> nn.Module:
    """``model`` in eval mode on ``device`` (default: where it is), in place and returned,
    laid out to run fast.

    On a CPU a convolutional network's weights go to ``channels_last``, the
    layout oneDNN's convolutions prefer: our ResNet-20 answers 15-20% faster at
    batch sizes 1 to 128 on the 2-core reference machine, to within 3e-6 of
    the contiguous model's logits. Inputs need no change; TorchScript models
    are left as they are. With ``fold``, a model that can (our ResNets) also has
    its batch norms folded into its convolutions, a further 8-20%; it then only
    answers: it can no longer train, nor save a checkpoint of its architecture.
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    model = model.to(device).eval()
    if fold and hasattr(model, "fold_batchnorm"):
        model.fold_batchnorm()
    if (device.type == "cpu" and not isinstance(model, torch.jit.ScriptModule)
            and any(isinstance(m, nn.Conv2d) for m in model.modules())):
        model = model.to(memory_format=torch.channels_last)
    return model


def save_checkpoint(path: Path, model: nn.Module, spec: ModelSpec, meta: dict[str, Any]) -> None:
    """Write the spec, the state dict and metadata atomically to ``path``; tensors are
    stored contiguous, so a file's bytes do not depend on the model's memory layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = model.state_dict()
    for k, v in state.items():  # in place: the dict keeps its metadata (module versions)
        state[k] = v.clone(memory_format=torch.contiguous_format)  # canonical strides too
    torch.save({"spec": spec.to_dict(), "state_dict": state, "meta": meta}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, spec: ModelSpec | None = None, *, prefer_stored: bool = True
                    ) -> tuple[nn.Module, ModelSpec, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`, or a bare state dict with ``spec``.

    A cachenet checkpoint carries its own spec; it is used unless ``spec`` is
    given and ``prefer_stored`` is False. ``{"state_dict": ...}`` wrappers, as
    many training scripts save, are unwrapped.
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(blob, dict) and "state_dict" in blob and "spec" in blob:
        if spec is None or prefer_stored:
            spec = ModelSpec.from_dict(blob["spec"])
        state, meta = blob["state_dict"], blob.get("meta", {})
    elif isinstance(blob, dict) and spec is not None:
        state = blob.get("state_dict", blob) if isinstance(blob.get("state_dict"), dict) else blob
        meta = {}
    else:
        raise ModelError(f"{path} is not a cachenet checkpoint; pass the architecture to load "
                         "a bare state dict")
    model = build_model(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"state dict in {path} does not fit '{spec.arch}': {exc}") from exc
    return model.eval(), spec, meta


def load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # torch.jit raises RuntimeError and others
        raise ModelError(f"cannot load TorchScript file {path}: {exc}") from exc


def cached_checkpoint(cache_dir: Path, name: str, reference_dir: Path | None = None
                      ) -> Path | None:
    """The checkpoint ``name`` from the cache, else from ``reference_dir`` (trained
    checkpoints shipped with a checkout, such as ``bench/reference``: the caller says
    where, the library does not guess)."""
    for root in (cache_dir / "models", reference_dir):
        if root is not None and (root / name).is_file():
            return root / name
    return None
