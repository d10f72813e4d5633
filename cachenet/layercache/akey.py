"""The approximate-key result cache (Finamore et al.): an exact lookup under a coarse key.

Key: the site's features averaged over their ``cells`` spatial cells (global
average pooling: a small shift moves little) and scaled to unit length (a darker
view keeps its direction), then standardised, projected to ``dim`` dimensions,
and quantised to cells of side ``step``; the cell's bytes index a table. Value: how
often the full model gave each label for inputs of that cell. A lookup is
confident when the cell holds only one label: ``n / (n + 1)`` after ``n``
answers, else 0 (so a calibrated threshold is a minimum count). A disagreement
found by auto-refresh (:mod:`cachenet.layercache.control`) is filled in like any
answer, which makes the cell mixed and ends its hits. At most ``capacity``
cells; the least recently used goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from cachenet.exceptions import ManifestError
from cachenet.layercache.kinds import Lookup, Projection, need, register


@dataclass
class KeyConfig:
    num_classes: int
    dim: int = 8
    step: float = 1.0
    capacity: int = 65536
    seed: int = 0
    cells: int = 1  # spatial cells per channel in the site's features (grid x grid)

    def __post_init__(self) -> None:
        if not (1 <= self.num_classes <= 100_000 and 1 <= self.dim <= 64
                and 0.0 < self.step < 1e6 and 1 <= self.capacity <= 1 << 22
                and 1 <= self.cells <= 256):
            raise ManifestError(f"akey config out of range: {asdict(self)}")


def invariant(feats: np.ndarray, cells: int) -> np.ndarray:
    """Features averaged over their spatial cells and scaled to unit length."""
    feats = np.asarray(feats, np.float32)
    if cells > 1:
        if feats.shape[1] % cells:
            raise ValueError(f"{feats.shape[1]} features are not {cells} cells per channel")
        feats = feats.reshape(len(feats), -1, cells).mean(-1)
    return feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-6)


@register
class KeyCache:
    kind: ClassVar[str] = "akey"
    Config: ClassVar[type] = KeyConfig

    def __init__(self, config: KeyConfig, projection: Projection) -> None:
        self.config = config
        self.projection = projection
        self.table: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @classmethod
    def fit(cls, config: KeyConfig, feats: np.ndarray) -> KeyCache:
        return cls(config, Projection.fit(invariant(feats, config.cells), config.dim,
                                          config.seed))

    def codes(self, feats: np.ndarray) -> np.ndarray:
        z = np.floor(self.projection(invariant(feats, self.config.cells))
                     / np.float32(self.config.step))
        return np.clip(z, -32768, 32767).astype(np.int16)

    def lookup(self, feats: np.ndarray) -> Lookup:
        n = len(feats)
        labels, conf = np.zeros(n, np.int64), np.zeros(n)
        for i, code in enumerate(self.codes(feats)):
            counts = self.table.get(code.tobytes())
            if counts is None:
                continue
            self.table.move_to_end(code.tobytes())
            total, best = int(counts.sum()), int(counts.argmax())
            labels[i] = best
            if counts[best] == total:
                conf[i] = total / (total + 1.0)
        return Lookup(labels, conf)

    def fill(self, feats: np.ndarray, labels: np.ndarray) -> None:
        k = self.config.num_classes
        for code, label in zip(self.codes(feats), np.asarray(labels, np.int64), strict=True):
            if not 0 <= label < k:
                continue
            key = code.tobytes()
            counts = self.table.get(key)
            if counts is None:
                counts = self.table[key] = np.zeros(k, np.int32)
                while len(self.table) > self.config.capacity:
                    self.table.popitem(last=False)
            else:
                self.table.move_to_end(key)
            counts[label] += 1

    def answers(self) -> int:
        """How many classes its answers need."""
        return self.config.num_classes

    @property
    def lookup_macs(self) -> int:
        return self.projection.macs + len(self.projection.mean) * self.config.cells

    def arrays(self) -> dict[str, np.ndarray]:
        dim, k = self.config.dim, self.config.num_classes
        codes = [np.frombuffer(key, np.int16) for key in self.table]
        return {**self.projection.arrays(),
                "codes": np.asarray(codes, np.int16).reshape(-1, dim),
                "counts": np.asarray(list(self.table.values()), np.int32).reshape(-1, k)}

    @classmethod
    def from_arrays(cls, config: KeyConfig, arrays: dict[str, np.ndarray]) -> KeyCache:
        cache = cls(config, Projection.from_arrays(arrays, cls.kind))
        if cache.projection.matrix.shape[1] != config.dim:
            raise ManifestError(f"akey projection has {cache.projection.matrix.shape[1]} "
                                f"columns, the config says dim {config.dim}")
        if "codes" in arrays:
            codes = need(arrays, "codes", 2, cls.kind).astype(np.int16)
            counts = need(arrays, "counts", 2, cls.kind).astype(np.int32)
            if codes.shape[1:] != (config.dim,) or counts.shape != (len(codes),
                                                                    config.num_classes) \
                    or len(codes) > config.capacity or (counts < 0).any():
                raise ManifestError(f"akey table of {codes.shape} codes and {counts.shape} "
                                    "counts does not fit the config")
            for code, c in zip(codes, counts, strict=True):
                cache.table[code.tobytes()] = c.copy()
        return cache
