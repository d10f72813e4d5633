"""The kNN approximate cache (Freeze Inference): nearest stored keys that agree.

Key: the site's features standardised and projected to ``dim`` dimensions by a
fixed seeded matrix (:class:`~cachenet.layercache.kinds.Projection`), scaled by
1/sqrt(dim) so that distances are O(1). Entries: (key, the full model's label).
A lookup finds the ``k`` nearest entries; when they all carry one label, the
confidence is a ratio test: ``1 - d_k / d_other``, with ``d_k`` the distance to
the k-th nearest and ``d_other`` to the nearest entry of *another* label (1
when there is none); else 0. A view of an object seen before lies much nearer
to its own entries than to any other answer's, wherever in the feature space
it is, which a bare radius cannot tell (on ResNet-18's video frames the ratio
answers 83% of them at 1% disagreement where ``1 / (1 + d)`` answered 60%).
Calibration picks the threshold. At most ``capacity``
entries are held; the least recently used (as a nearest neighbour, or filled)
goes first. The search is one matrix product (N x capacity x dim multiply-adds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from cachenet.exceptions import ManifestError
from cachenet.layercache.kinds import Lookup, Projection, need, register


@dataclass
class KnnConfig:
    dim: int = 32
    k: int = 3
    capacity: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if not (1 <= self.dim <= 1024 and 1 <= self.k <= 64 and 1 <= self.capacity <= 1 << 20):
            raise ManifestError(f"knn config out of range: {asdict(self)}")


@register
class KnnCache:
    kind: ClassVar[str] = "knn"
    Config: ClassVar[type] = KnnConfig

    def __init__(self, config: KnnConfig, projection: Projection) -> None:
        self.config = config
        self.projection = projection
        cap, dim = config.capacity, config.dim
        self.keys = np.zeros((cap, dim), np.float32)
        self.sq = np.zeros(cap, np.float32)  # squared norms of the keys
        self.labels = np.zeros(cap, np.int64)
        self.used = np.zeros(cap, np.int64)  # last use, for LRU eviction
        self.size = 0
        self.clock = 0

    @classmethod
    def fit(cls, config: KnnConfig, feats: np.ndarray) -> KnnCache:
        return cls(config, Projection.fit(feats, config.dim, config.seed))

    def key(self, feats: np.ndarray) -> np.ndarray:
        return self.projection(feats) / np.float32(np.sqrt(self.config.dim))

    def lookup(self, feats: np.ndarray) -> Lookup:
        n, k = len(feats), self.config.k
        if self.size < k or n == 0:
            return Lookup(np.zeros(n, np.int64), np.zeros(n))
        q = self.key(feats)
        keys = self.keys[:self.size]
        d2 = np.maximum((q * q).sum(1, keepdims=True) + self.sq[:self.size]
                        - 2.0 * (q @ keys.T), 0.0)
        rows = np.arange(n)[:, None]
        if k == 1:  # a scan, several times faster than a partition
            near = d2.argmin(1)[:, None]
        else:
            near = np.argpartition(d2, k - 1, axis=1)[:, :k]
            near = near[rows, np.argsort(d2[rows, near], axis=1)]
        labels = self.labels[near]
        dk = np.sqrt(d2[np.arange(n), near[:, -1]])
        others = np.where(self.labels[:self.size] == labels[:, :1], np.inf, d2).min(1)
        ratio = np.where(np.isfinite(others), 1.0 - dk / np.sqrt(np.maximum(others, 1e-12)),
                         1.0)
        unanimous = (labels == labels[:, :1]).all(1)
        self.clock += 1
        self.used[near[:, 0]] = self.clock
        return Lookup(labels[:, 0].copy(), np.where(unanimous, np.clip(ratio, 0.0, 1.0), 0.0))

    def fill(self, feats: np.ndarray, labels: np.ndarray) -> None:
        cap = self.config.capacity
        feats, labels = feats[-cap:], np.asarray(labels, np.int64)[-cap:]
        n = len(feats)
        if n == 0:
            return
        free = min(n, cap - self.size)
        slots = np.arange(self.size, self.size + free)
        if free < n:  # evict the least recently used
            slots = np.concatenate([slots, np.argsort(self.used[:self.size],
                                                      kind="stable")[:n - free]])
        q = self.key(feats)
        self.keys[slots], self.sq[slots] = q, (q * q).sum(1)
        self.labels[slots] = labels
        self.clock += 1
        self.used[slots] = self.clock
        self.size += free

    def answers(self) -> int:
        """How many classes its answers need: one more than the largest label stored."""
        return int(self.labels[:self.size].max(initial=-1)) + 1

    @property
    def lookup_macs(self) -> int:
        return self.projection.macs + self.config.capacity * (self.config.dim + 2)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.projection.arrays(), "keys": self.keys[:self.size],
                "labels": self.labels[:self.size]}

    @classmethod
    def from_arrays(cls, config: KnnConfig, arrays: dict[str, np.ndarray]) -> KnnCache:
        cache = cls(config, Projection.from_arrays(arrays, cls.kind))
        if cache.projection.matrix.shape[1] != config.dim:
            raise ManifestError(f"knn projection has {cache.projection.matrix.shape[1]} "
                                f"columns, the config says dim {config.dim}")
        if "keys" in arrays:
            keys = need(arrays, "keys", 2, cls.kind).astype(np.float32)
            labels = need(arrays, "labels", 1, cls.kind).astype(np.int64)
            if keys.shape[1:] != (config.dim,) or len(keys) != len(labels) \
                    or len(keys) > config.capacity:
                raise ManifestError(f"knn table of {keys.shape} keys and {labels.shape} labels "
                                    f"does not fit dim {config.dim}, capacity {config.capacity}")
            n = len(keys)
            cache.keys[:n], cache.sq[:n], cache.labels[:n] = keys, (keys * keys).sum(1), labels
            cache.size = n
        return cache
