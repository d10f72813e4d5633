"""The suite's named workloads: which test images, in which order. Seeded; saved as files.

* ``iid``: classes uniform, independent;
* ``runs10``, ``runs50``: class runs of mean length 10 and 50;
* ``markov90``: the class stays with probability 0.9, else moves to a uniform other;
* ``zipf``: class popularity Zipf with s = 1.2 (classes ranked in a seeded order);
* ``confusable``: class runs of mean length 50 over the classes the cache model
  confuses most (:func:`confusable_classes`, chosen on the calibration split, never
  the test split): the stream on which a promise kept only on average breaks;
* ``context`` (:func:`context_trace`, not in :data:`TRACES`: ``bench/context.py``
  runs it on a fleet): a device holds a context of 2-3 classes for a long while,
  class runs within it over images it has not shown, then moves to another;
* ``video``: a fixed camera: one test image (an object) held for a run of frames
  (mean 30), each frame shifted by up to 2 px, its brightness within 10%, with
  sensor noise (:mod:`cachenet.toolchain.data.video`); its frames are rendered from
  the trace (:func:`trace_inputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cachenet.sim.stream import class_run_stream

TRACES = ("iid", "runs10", "runs50", "markov90", "zipf", "confusable", "video")

#: How many classes the ``confusable`` trace runs over.
CONFUSABLE = 3


def confusable_classes(cache_logits: np.ndarray, full_labels: np.ndarray,
                       k: int = CONFUSABLE) -> np.ndarray:
    """The ``k`` classes of the full model's answer on which the cache model agrees with
    it least (over all of them, answered or not), worst first; pass calibration data."""
    agree = cache_logits.argmax(1) == full_labels
    classes = np.unique(full_labels)
    rate = np.asarray([agree[full_labels == c].mean() for c in classes])
    return classes[np.argsort(rate, kind="stable")[:k]]


def _images_of(labels: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    return np.asarray([rng.choice(by_class[c]) for c in classes], dtype=np.int64)


def _iid(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, len(labels), n)


def _markov(labels: np.ndarray, n: int, rng: np.random.Generator, stay: float = 0.9
            ) -> np.ndarray:
    k = int(labels.max()) + 1
    seq = [int(rng.integers(k))]
    for _ in range(n - 1):
        if rng.random() < stay:
            seq.append(seq[-1])
        else:
            seq.append(int((seq[-1] + rng.integers(1, k)) % k))
    return _images_of(labels, np.asarray(seq), rng)


def _zipf(labels: np.ndarray, n: int, rng: np.random.Generator, s: float = 1.2) -> np.ndarray:
    k = int(labels.max()) + 1
    p = 1.0 / np.arange(1, k + 1) ** s
    ranked = rng.permutation(k)
    return _images_of(labels, ranked[rng.choice(k, n, p=p / p.sum())], rng)


def video_trace(n_images: int, n: int, seed: int = 0):
    """The ``video`` trace: which image each frame shows, and how it is shifted, lit and
    noised (a :class:`cachenet.toolchain.data.video.Video`)."""
    from cachenet.toolchain.data.video import video_stream

    return video_stream(n_images, n, seed=seed)


def trace_inputs(name: str, x: np.ndarray, idx: np.ndarray, seed: int = 0) -> np.ndarray:
    """The inputs trace ``name`` sends: the images at ``idx``, or a video's frames."""
    if name != "video":
        return x[idx]
    from cachenet.toolchain.data.video import render

    return render(x, video_trace(len(x), len(idx), seed))


def _runs_over(labels: np.ndarray, classes: np.ndarray | None, n: int, seed: int
               ) -> np.ndarray:
    if classes is None or not len(classes):
        raise ValueError("the confusable trace needs its classes (confusable_classes)")
    pool = np.flatnonzero(np.isin(labels, classes))
    return pool[class_run_stream(labels[pool], n, mean_run=50, seed=seed)]


def make_trace(name: str, labels: np.ndarray, n: int, seed: int = 0, *,
               classes: np.ndarray | None = None) -> np.ndarray:
    """Indices into ``labels`` (the test split) for trace ``name`` (for ``video``: the
    object each frame shows); ``classes``: the classes ``confusable`` runs over."""
    rng = np.random.default_rng(seed)
    makers: dict[str, Callable[[], np.ndarray]] = {
        "iid": lambda: _iid(labels, n, rng),
        "runs10": lambda: class_run_stream(labels, n, mean_run=10, seed=seed),
        "runs50": lambda: class_run_stream(labels, n, mean_run=50, seed=seed),
        "markov90": lambda: _markov(labels, n, rng),
        "zipf": lambda: _zipf(labels, n, rng),
        "confusable": lambda: _runs_over(labels, classes, n, seed),
        "video": lambda: video_trace(len(labels), n, seed).indices,
    }
    if name not in makers:
        raise ValueError(f"unknown trace '{name}'; known: {', '.join(TRACES)}")
    return np.asarray(makers[name](), dtype=np.int64)


def context_trace(labels: np.ndarray, contexts: int, per_context: int, seed: int = 0,
                  sizes: tuple[int, int] = (2, 3), mean_run: float = 50.0
                  ) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """One device's ``context`` stream: ``contexts`` contexts of 2-3 classes (a new set
    each time, seeded), each ``per_context`` requests of class runs (mean ``mean_run``)
    over its classes, each image shown once within its context while its class has
    unshown ones. Returns (indices into ``labels``, each request's context, the
    classes of each context)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    idx, ctx, groups = [], [], []
    for c in range(contexts):
        group = rng.choice(classes, size=int(rng.integers(sizes[0], sizes[1] + 1)),
                           replace=False)
        groups.append(sorted(int(g) for g in group))
        unshown = {int(g): list(rng.permutation(np.flatnonzero(labels == g))) for g in group}
        shown = 0
        while shown < per_context:
            k = int(group[rng.integers(len(group))])
            for _ in range(min(int(rng.geometric(1.0 / mean_run)), per_context - shown)):
                pool = unshown[k] or list(np.flatnonzero(labels == k))
                idx.append(int(pool.pop()) if unshown[k] else int(rng.choice(pool)))
                ctx.append(c)
                shown += 1
    return np.asarray(idx, np.int64), np.asarray(ctx, np.int64), groups


def save_trace(path: Path, name: str, idx: np.ndarray, labels: np.ndarray, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = video_trace(len(labels), len(idx), seed).arrays() if name == "video" else {}
    extra.pop("indices", None)
    extra.pop("seed", None)
    np.savez_compressed(path, name=name, indices=idx.astype(np.int32),
                        labels=labels[idx].astype(np.int8), seed=seed, **extra)
