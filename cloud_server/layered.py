"""The full model served with layer caches: one batch through the cascade of sites.

:func:`layered_runner` gives the dynamic batcher a ``run_batch`` like any other:
numpy in, rows out. Its rows are :class:`Rows`: the logits, and per input what
answered it (``"full"`` or the rule ``"<site>:<kind>"``) and the multiply-adds
spent; the batcher slices them per request as it slices logits, unchanged. Rows
answered by the whole model fill the kNN and approximate-key tables at once
(:meth:`cachenet.layercache.LayerCascade.settle`), and a share of hits goes on
to the whole model to be re-checked (auto-refresh). Everything runs in the
batcher's one model thread, so the tables have one writer.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from cachenet.core.gate import softmax
from cachenet.core.manifest import Manifest
from cachenet.exceptions import ManifestError
from cachenet.layercache import LayerCascade, load_cascade, parse_spec
from cachenet.toolchain.sites import TorchRunner, staged

log = logging.getLogger(__name__)

FULL = "full"


@dataclass
class Rows:
    """A batch's answers; sliced per request by the batcher."""

    logits: np.ndarray
    by: list[str]
    macs: np.ndarray
    full_macs: int

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, s: slice) -> Rows:
        return Rows(self.logits[s], self.by[s], self.macs[s], self.full_macs)


class LayeredStats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answered_by: Counter = Counter()
        self.macs = 0
        self.full_macs = 0

    def record(self, rows: Rows) -> None:
        with self.lock:
            self.answered_by.update(rows.by)
            self.macs += int(rows.macs.sum())
            self.full_macs += rows.full_macs * len(rows)

    def snapshot(self) -> dict:
        with self.lock:
            return {"answered_by": dict(self.answered_by),
                    "macs_saved": 1.0 - self.macs / self.full_macs if self.full_macs else 0.0}


def load_layer_cascade(manifest: Manifest, root: Path, *, refresh_rate: float | None = None
                       ) -> tuple[LayerCascade, int]:
    """The full model's layer caches in the bundle, and their feature grid."""
    section = (manifest.data.get("full_model") or {}).get("layer_cache")
    if not section:
        raise ManifestError(f"bundle {root} carries no layer caches for the full model; "
                            "add them with `cachenet layercache`")
    spec = parse_spec(section, manifest)
    return load_cascade(spec, root, len(manifest.classes), refresh_rate=refresh_rate), spec.grid


def layered_runner(model: nn.Module, cascade: LayerCascade, stats: LayeredStats | None = None,
                   grid: int = 2):
    """``run_batch`` for the batcher: the cascade over ``model``'s stages.

    numpy's BLAS is held to one thread: the lookups are small products, and BLAS
    threads left spinning after them take the cores the model's convolutions need
    (measured: 3x slower batches with ResNet-20 on two cores)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    runner = TorchRunner(staged(model, grid))
    if len(runner.s.site_names) != len(cascade.site_names):
        raise ManifestError(f"the layer caches name {len(cascade.site_names)} sites, the full "
                            f"model has {len(runner.s.site_names)}")

    def run(x: np.ndarray) -> Rows:
        if not x.flags.writeable:
            x = x.copy()
        answered = cascade.run(runner, x, len(x))
        full = np.flatnonzero(answered.by < 0)
        if len(full):
            cascade.settle(answered, full, answered.labels[full],
                           softmax(answered.logits[full]).max(1))
        names = [FULL if b < 0 else cascade.rules[b].name for b in answered.by]
        rows = Rows(answered.logits, names, answered.macs, cascade.full_macs)
        if stats is not None:
            stats.record(rows)
        return rows
    return run
