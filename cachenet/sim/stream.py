"""Workloads with temporal locality: a camera sees a few classes at a time.

:func:`class_run_stream` draws runs of one class (geometric lengths with the
given mean) and, within a run, images of that class from a pool; with
``active > 1`` each run mixes that many classes (``(lo, hi)``: a number drawn
per run). Seeded and deterministic. numpy only. (A camera's stream of frames:
:mod:`cachenet.toolchain.data.video`.)
"""

from __future__ import annotations

import numpy as np


def class_run_stream(labels: np.ndarray, n: int, *, mean_run: float = 20.0,
                     active: int | tuple[int, int] = 1, seed: int = 0,
                     return_groups: bool = False):
    """Indices into ``labels`` forming a stream of ``n`` requests with class runs.

    With ``return_groups``, also the number of the run each request belongs to.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    lo, hi = (active, active) if isinstance(active, int) else active
    out: list[int] = []
    groups: list[int] = []
    run_no = 0
    while len(out) < n:
        run = int(rng.geometric(1.0 / mean_run))
        k = lo if lo == hi else int(rng.integers(lo, hi + 1))
        group = rng.choice(classes, size=min(k, len(classes)), replace=False)
        for _ in range(run):
            c = group[rng.integers(len(group))]
            out.append(int(rng.choice(by_class[c])))
            groups.append(run_no)
        run_no += 1
    idx = np.asarray(out[:n], dtype=np.int64)
    return (idx, np.asarray(groups[:n])) if return_groups else idx

