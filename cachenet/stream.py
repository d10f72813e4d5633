"""Workloads with temporal locality: a camera sees a few classes at a time.

:func:`class_run_stream` draws runs of one class (geometric lengths with the
given mean) and, within a run, images of that class from a pool; with
``active > 1`` each run mixes that many classes. Seeded and deterministic.
numpy only.
"""

from __future__ import annotations

import numpy as np


def class_run_stream(labels: np.ndarray, n: int, *, mean_run: float = 20.0, active: int = 1,
                     seed: int = 0) -> np.ndarray:
    """Indices into ``labels`` forming a stream of ``n`` requests with class runs."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    out: list[int] = []
    while len(out) < n:
        run = int(rng.geometric(1.0 / mean_run))
        group = rng.choice(classes, size=min(active, len(classes)), replace=False)
        for _ in range(run):
            c = group[rng.integers(len(group))]
            out.append(int(rng.choice(by_class[c])))
    return np.asarray(out[:n], dtype=np.int64)
