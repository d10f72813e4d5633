"""Layers every cachenet model starts with."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Subtract the per-channel mean and divide by the std: the model's first layer.

    Keeping normalisation inside the model means the tensor on the wire is the
    same [0, 1] image for the cache model and the full model, and the values
    travel with the weights (in the state dict and the ONNX graph).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        as_column = {"dtype": torch.float32}
        self.register_buffer("mean", torch.tensor(list(mean), **as_column).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), **as_column).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
