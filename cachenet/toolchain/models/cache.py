"""Cache models: the small networks the edge runs under ONNX Runtime.

* :class:`TinyCNN`: stages of 3x3 conv + BN + ReLU, each stage after the first
  halving the resolution with a 2x2 max pool, then global average pooling and a
  linear head. Knobs: ``widths`` (one per stage) and ``depth`` (convs per stage).
* :class:`MLP`: for tiny inputs such as the 8x8 digits. Knob: ``hidden``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from cachenet.toolchain.models.layers import Normalize


class TinyCNN(nn.Module):
    def __init__(self, *, in_channels: int, num_classes: int, mean: Sequence[float],
                 std: Sequence[float], widths: Sequence[int] = (12, 24, 48),
                 depth: int = 1) -> None:
        super().__init__()
        if not widths or depth < 1:
            raise ValueError("TinyCNN needs at least one stage and depth >= 1")
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        c_in = in_channels
        for stage, w in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers += [nn.Conv2d(c_in, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
                c_in = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class MLP(nn.Module):
    def __init__(self, *, in_features: int, num_classes: int, mean: Sequence[float],
                 std: Sequence[float], hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        dims = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(torch.flatten(self.normalize(x), 1)))
