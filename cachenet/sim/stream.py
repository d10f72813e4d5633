"""Workloads with temporal locality: a camera sees a few classes at a time.

:func:`class_run_stream` draws runs of one class (geometric lengths with the
given mean) and, within a run, images of that class from a pool; with
``active > 1`` each run mixes that many classes (``(lo, hi)``: a number drawn
per run). :func:`video_stream` is a fixed camera: one *object* (one image) held
for a run of frames, each frame slightly shifted, brighter or darker, and noisy
(:func:`render`). Seeded and deterministic. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Video:
    """A fixed camera: per frame, the object in view (an index into the images), its
    shift in pixels, a brightness gain and a noise seed; :func:`render` makes the frames."""

    indices: np.ndarray  # int64, n
    dx: np.ndarray  # int8, n
    dy: np.ndarray  # int8, n
    gain: np.ndarray  # float32, n
    noise: float
    seed: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {"indices": self.indices.astype(np.int32), "dx": self.dx, "dy": self.dy,
                "gain": self.gain, "noise": np.float32(self.noise), "seed": np.int64(self.seed)}


def video_stream(n_images: int, n: int, *, mean_run: float = 30.0, max_shift: int = 2,
                 brightness: float = 0.10, noise: float = 0.02, seed: int = 0) -> Video:
    """``n`` frames: objects drawn uniformly from ``n_images``, each held for a run of
    frames (geometric, mean ``mean_run``); every frame shifts it by up to ``max_shift``
    pixels each way, scales its brightness by up to ``brightness`` either way, and adds
    Gaussian sensor noise of std ``noise``."""
    rng = np.random.default_rng(seed)
    idx: list[int] = []
    while len(idx) < n:
        idx += [int(rng.integers(n_images))] * int(rng.geometric(1.0 / mean_run))
    shifts = rng.integers(-max_shift, max_shift + 1, size=(2, n)).astype(np.int8)
    gain = rng.uniform(1 - brightness, 1 + brightness, n).astype(np.float32)
    return Video(np.asarray(idx[:n], np.int64), shifts[0], shifts[1], gain, noise, seed)


def render(images: np.ndarray, video: Video) -> np.ndarray:
    """The frames of ``video`` from ``images`` (N x C x H x W in [0, 1]): shifted with
    the edge pixels repeated, brightness-scaled, noisy, clipped to [0, 1]; float32."""
    pad = int(max(np.abs(video.dx).max(initial=0), np.abs(video.dy).max(initial=0)))
    h, w = images.shape[2:]
    rng = np.random.default_rng(video.seed + 1)
    out = np.empty((len(video.indices), *images.shape[1:]), np.float32)
    for f, (i, dx, dy, g) in enumerate(zip(video.indices, video.dx, video.dy, video.gain,
                                           strict=True)):
        padded = np.pad(images[i], ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        frame = padded[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w] * g
        out[f] = frame + rng.normal(0.0, video.noise, frame.shape)
    return np.clip(out, 0.0, 1.0, out=out)
