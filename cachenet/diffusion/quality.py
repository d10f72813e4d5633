"""How good generated images are: FID on a classifier's features, PSNR, agreement.

The Fréchet distance (FID, Heusel et al., 2017) is computed as usual, but on the
penultimate features of a CIFAR-10 classifier trained here (the full model)
rather than on Inception's: no weights are downloaded, and the features are
those of the model that judges the images in production. Its absolute values
are therefore not comparable with published FIDs; differences between
samplers and caches measured with the same classifier are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cachenet.toolchain.models import load_checkpoint


@dataclass
class Judge:
    """A classifier read for its labels and its penultimate features: the input of its
    last linear layer (the head of every classifier here, ``nn.Linear`` last among its
    modules)."""

    model: nn.Module

    @classmethod
    def load(cls, path: Path) -> Judge:
        model, _spec, _meta = load_checkpoint(path)
        return cls(model.eval())

    @torch.no_grad()
    def read(self, images: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Features (N x D) and predicted labels of uint8 images N x C x H x W."""
        last = [m for m in self.model.modules() if isinstance(m, nn.Linear)][-1]
        device = next(self.model.parameters()).device
        feats: list[torch.Tensor] = []
        handle = last.register_forward_hook(lambda _m, inp, _o: feats.append(inp[0].float()))
        labels = []
        try:
            for i in range(0, len(images), batch):
                x = torch.from_numpy(images[i:i + batch]).to(device).float() / 255.0
                labels.append(self.model(x).argmax(1).cpu())
        finally:
            handle.remove()
        return (torch.cat(feats).cpu().double().numpy(), torch.cat(labels).numpy())


def stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(0), np.cov(feats, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), by symmetric square roots."""
    s1 = _sqrt_psd(c1)
    cross = np.linalg.eigvalsh(s1 @ c2 @ s1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2)
                 - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the PSNR (dB) between uint8 images ``a`` and ``b``."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))
