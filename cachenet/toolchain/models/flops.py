"""Multiply-accumulate counts of convolutions and linear layers, by forward hooks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass on one input of ``input_shape`` (C, H, W).

    Counts Conv2d and Linear layers, which dominate every model here; BN,
    activations and pooling are ignored. TorchScript modules report 0. Each layer
    counts the first item of its output, so a model that batches test-time views
    of the input (``tta="flip"``: two) reports one view's pass: its cost per
    input is that times the number of views.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += int(out[0].numel()) * k

    def linear_hook(m: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += int(out[0].numel()) * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
