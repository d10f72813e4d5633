"""The learned cache (GATI, Abedi et al.): a small head on a site's features.

The head is linear, or one hidden ReLU layer, on the site's pooled features
(N x D), trained by the toolchain by self-distillation on the full model's own
outputs (no labels). Its confidence is a gate score of its logits
(:data:`cachenet.core.gate.SCORES`). Here it only answers, in numpy: the cloud
and the edge run the same arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from cachenet.core.gate import SCORES, score
from cachenet.exceptions import ManifestError
from cachenet.layercache.kinds import Lookup, need, register


@dataclass
class HeadConfig:
    hidden: int = 0
    score: str = "max_softmax"

    def __post_init__(self) -> None:
        if not 0 <= self.hidden <= 4096 or not isinstance(self.score, str) \
                or self.score not in SCORES:
            raise ManifestError(f"head config out of range: {asdict(self)}")


@register
class HeadCache:
    kind: ClassVar[str] = "learned"
    Config: ClassVar[type] = HeadConfig

    def __init__(self, config: HeadConfig, weights: list[tuple[np.ndarray, np.ndarray]]
                 ) -> None:
        self.config = config
        self.weights = [(w.astype(np.float32), b.astype(np.float32)) for w, b in weights]

    def logits(self, feats: np.ndarray) -> np.ndarray:
        h = np.asarray(feats, np.float32)
        for i, (w, b) in enumerate(self.weights):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h

    def lookup(self, feats: np.ndarray) -> Lookup:
        logits = self.logits(feats)
        return Lookup(logits.argmax(1).astype(np.int64),
                      score(logits, self.config.score).astype(np.float64), logits)

    def answers(self) -> int:
        """How many classes its answers need: its logits."""
        return int(self.weights[-1][0].shape[1])

    def fill(self, feats: np.ndarray, labels: np.ndarray) -> None:
        """A head learns offline; the cloud's answers do not change it."""

    @property
    def lookup_macs(self) -> int:
        return sum(int(w.size) for w, _ in self.weights)

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, (w, b) in enumerate(self.weights):
            out[f"w{i}"], out[f"b{i}"] = w, b
        return out

    @classmethod
    def from_arrays(cls, config: HeadConfig, arrays: dict[str, np.ndarray]) -> HeadCache:
        layers = 2 if config.hidden else 1
        weights = [(need(arrays, f"w{i}", 2, cls.kind), need(arrays, f"b{i}", 1, cls.kind))
                   for i in range(layers)]
        for i, (w, b) in enumerate(weights):
            if w.shape[1] != len(b) or (i and weights[i - 1][0].shape[1] != w.shape[0]):
                raise ManifestError(f"head layer {i} has weights {w.shape} and bias {b.shape}, "
                                    "which do not chain")
        if config.hidden and weights[0][0].shape[1] != config.hidden:
            raise ManifestError(f"head hidden width is {weights[0][0].shape[1]}, the config "
                                f"says {config.hidden}")
        return cls(config, weights)
