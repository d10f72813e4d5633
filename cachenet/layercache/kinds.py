"""What every layer-cache kind is: the interface, the registry, the shared key reduction.

A kind is a class with a ``kind`` name, a config dataclass (``Config``), and:

* ``lookup(feats) -> Lookup``: a label and a confidence in [0, 1] per row of
  site features (N x D); the cascade answers where confidence >= threshold;
* ``fill(feats, labels)``: store the full model's answers (tables); heads ignore it;
* ``lookup_macs``: multiply-adds one lookup costs, to weigh against what it saves;
* ``answers()``: how many classes its answers need (checked against the bundle's);
* ``arrays()`` / ``from_arrays(config, arrays)``: its state as named arrays,
  which the bundle stores in an ``.npz`` file (hashed like every file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from cachenet.exceptions import ManifestError


@dataclass
class Lookup:
    labels: np.ndarray  # int64, N
    conf: np.ndarray  # float64, N, in [0, 1]
    logits: np.ndarray | None = None  # N x K where the kind has them (heads)


class SiteCache(Protocol):
    kind: ClassVar[str]
    config: Any

    def lookup(self, feats: np.ndarray) -> Lookup: ...

    def fill(self, feats: np.ndarray, labels: np.ndarray) -> None: ...

    def answers(self) -> int: ...

    @property
    def lookup_macs(self) -> int: ...

    def arrays(self) -> dict[str, np.ndarray]: ...


#: kind name -> class; each class has ``Config`` and ``from_arrays(config, arrays)``.
KINDS: dict[str, type] = {}


def register(cls: type) -> type:
    KINDS[cls.kind] = cls  # type: ignore[attr-defined]
    return cls


def need(arrays: dict[str, np.ndarray], name: str, ndim: int, kind: str) -> np.ndarray:
    """``arrays[name]`` as a finite float or int array of ``ndim`` dims, or ManifestError."""
    if name not in arrays:
        raise ManifestError(f"{kind} cache file has no array '{name}'")
    a = np.asarray(arrays[name])
    if a.ndim != ndim or a.dtype.kind not in "fiu":
        raise ManifestError(f"{kind} cache array '{name}' has shape {a.shape} and dtype "
                            f"{a.dtype}; expected {ndim} numeric dims")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ManifestError(f"{kind} cache array '{name}' holds NaN or infinite values")
    return a


@dataclass
class Projection:
    """Standardise site features and project them to a few dimensions: the key."""

    mean: np.ndarray  # D
    scale: np.ndarray  # D
    matrix: np.ndarray  # D x d

    @classmethod
    def fit(cls, feats: np.ndarray, dim: int, seed: int) -> Projection:
        feats = np.asarray(feats, dtype=np.float32)
        mean = feats.mean(0)
        scale = feats.std(0) + 1e-6
        rng = np.random.default_rng(seed)
        matrix = rng.standard_normal((feats.shape[1], dim)).astype(np.float32)
        matrix /= np.sqrt(feats.shape[1])
        return cls(mean.astype(np.float32), scale.astype(np.float32), matrix)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        return ((np.asarray(feats, np.float32) - self.mean) / self.scale) @ self.matrix

    @property
    def macs(self) -> int:
        return int(self.matrix.size + 2 * len(self.mean))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale, "matrix": self.matrix}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], kind: str) -> Projection:
        mean = need(arrays, "mean", 1, kind).astype(np.float32)
        scale = need(arrays, "scale", 1, kind).astype(np.float32)
        matrix = need(arrays, "matrix", 2, kind).astype(np.float32)
        if not (len(mean) == len(scale) == matrix.shape[0]) or (scale <= 0).any():
            raise ManifestError(f"{kind} cache projection does not fit together: mean "
                                f"{mean.shape}, scale {scale.shape}, matrix {matrix.shape}")
        return cls(mean, scale, matrix)
