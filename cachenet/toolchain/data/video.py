"""A fixed camera watching objects: the ``video`` workload, as frames.

:func:`video_stream` draws which object (an image of a data set) is in view
for each frame: one object held for a run of frames (geometric, mean 30),
then the next. :func:`render` makes the frames: each shifted by up to 2 pixels
each way, its brightness scaled by up to 10% either way, with Gaussian sensor
noise, clipped to [0, 1]. Seeded and deterministic; numpy only. Layer caches
can be calibrated on such a replay of the calibration split
(``cachenet layercache --workload video``), and the benchmarks stream it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
