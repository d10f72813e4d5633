"""Multiply-accumulate counts, by forward hooks: the one counter, for the cache and full
models (:func:`count_macs`), their layer-cache stages and the denoisers' units
(:func:`macs_by_unit`).

Counted leaves: convolutions, linear layers, and any module that says what one call
costs with a ``macs(inputs, output)`` method (the denoisers' attention cores: their
two matrix products). BN, activations and pooling are ignored: those layers dominate
every model here. Each leaf counts the first item of its output, so a count is one
input's; a model that batches test-time views of its input (``tta="flip"``: two)
reports one view's pass, and its cost per input is that times the number of views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def leaf_macs(m: nn.Module, inputs: tuple, out: torch.Tensor) -> int:
    """Multiply-adds of one call of a counted leaf, for the first item of the batch."""
    if isinstance(m, nn.Conv2d):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        return int(out[0].numel()) * k
    if isinstance(m, nn.Linear):
        return int(out[0].numel()) * m.in_features
    own = getattr(m, "macs", None)
    return int(own(inputs, out)) if callable(own) else 0


def counted(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d | nn.Linear) or callable(getattr(m, "macs", None))


def macs_by_unit(model: nn.Module, units: list[str], run: Callable[[], object]
                 ) -> dict[str, int]:
    """Multiply-adds per unit of what ``run()`` (one forward pass of ``model``) computes.

    Each counted leaf's count goes to the longest unit name that prefixes its qualified
    name (``""`` holds every module); every counted leaf must fall in a unit. Runs
    without gradients, in eval mode, and leaves the model's mode as it was.
    """
    totals = dict.fromkeys(units, 0)
    by_len = sorted(units, key=len, reverse=True)
    handles = []
    for name, m in model.named_modules():
        if not counted(m):
            continue
        owner = next((u for u in by_len if u == "" or name == u or name.startswith(u + ".")),
                     None)
        if owner is None:
            raise ValueError(f"module {name} lies in no unit of {units}")

        def hook(m: nn.Module, inp: tuple, out: torch.Tensor, owner: str = owner) -> None:
            totals[owner] += leaf_macs(m, inp, out)

        handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return totals


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass on one input of ``input_shape`` (C, H, W); TorchScript
    modules report 0."""
    return macs_by_unit(model, [""], lambda: model(torch.zeros(1, *input_shape)))[""]
