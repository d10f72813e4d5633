"""Full models for CIFAR-size inputs, in plain torch (no torchvision here).

* :func:`resnet20`: He et al.'s CIFAR ResNet-20 (3 stages of 3 basic blocks,
  widths 16/32/64, ~0.27 M parameters, ~41 M multiply-adds at 32x32). Trains
  on a CPU.
* :func:`resnet18`: the usual CIFAR variant of ResNet-18 (3x3 stem, no max
  pool, widths 64-512, ~11 M parameters, ~0.56 G multiply-adds at 32x32).

Both end in global average pooling, so they accept any input size. With
``tta="flip"`` a model answers, in eval mode, the mean of its logits on the
input and on its mirror image (horizontal-flip test-time augmentation: the same
weights, two passes). Training is unchanged: TTA only applies in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cachenet.toolchain.models.layers import Normalize


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))

    def fold_batchnorm(self) -> None:
        self.conv1, self.bn1 = _folded(self.conv1, self.bn1)
        self.conv2, self.bn2 = _folded(self.conv2, self.bn2)
        if isinstance(self.shortcut, nn.Sequential):
            self.shortcut[0], self.shortcut[1] = _folded(self.shortcut[0], self.shortcut[1])


def _folded(conv: nn.Module, bn: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``conv`` with the eval-mode ``bn`` after it folded into its weights, and what takes
    ``bn``'s place (an identity); a pair folded already is returned as it is."""
    if not isinstance(bn, nn.BatchNorm2d):
        return conv, bn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv, bn), nn.Identity()


TTA_MODES = ("none", "flip")


class ResNet(nn.Module):
    def __init__(self, blocks: Sequence[int], widths: Sequence[int], *, in_channels: int,
                 num_classes: int, mean: Sequence[float], std: Sequence[float],
                 tta: str = "none") -> None:
        super().__init__()
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, not {tta!r}")
        self.tta = tta
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c_in = widths[0]
        for stage, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            for i in range(n):
                layers.append(BasicBlock(c_in, w, 2 if (i == 0 and stage > 0) else 1))
                c_in = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def fold_batchnorm(self) -> ResNet:
        """Fold every batch norm into the convolution before it, for inference only (in
        eval mode a batch norm is an affine map per channel): the same answers to float
        rounding, 8-20% faster on a CPU; a folded model cannot train, nor load or save
        checkpoints of the unfolded architecture. Returns ``self``."""
        if self.training:
            raise RuntimeError("fold_batchnorm() needs eval mode: training updates the norms")
        self.stem[0], self.stem[1] = _folded(self.stem[0], self.stem[1])
        for block in self.layers:
            block.fold_batchnorm()
        return self

    def single(self, x: torch.Tensor) -> torch.Tensor:
        """One pass, without test-time augmentation."""
        x = self.layers(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta == "flip" and not self.training:
            # Both views in one batch (eval-mode BN is per input): one call, larger kernels.
            both = self.single(torch.cat([x, x.flip(3)]))
            return 0.5 * (both[:len(x)] + both[len(x):])
        return self.single(x)


def resnet20(*, in_channels: int = 3, num_classes: int = 10, mean: Sequence[float] = (0.5,),
             std: Sequence[float] = (0.25,), tta: str = "none") -> ResNet:
    return ResNet((3, 3, 3), (16, 32, 64), in_channels=in_channels, num_classes=num_classes,
                  mean=mean, std=std, tta=tta)


def resnet18(*, in_channels: int = 3, num_classes: int = 10, mean: Sequence[float] = (0.5,),
             std: Sequence[float] = (0.25,), tta: str = "none") -> ResNet:
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), in_channels=in_channels,
                  num_classes=num_classes, mean=mean, std=std, tta=tta)
