"""The video workload: objects held for runs of frames, each frame a little different."""

from __future__ import annotations

import numpy as np

from cachenet.toolchain.data.video import render, video_stream


def test_frames_are_shifted_lit_and_noisy_copies_of_the_object_in_view():
    rng = np.random.default_rng(0)
    images = rng.random((20, 3, 16, 16), dtype=np.float32)
    video = video_stream(len(images), 600, seed=4)
    assert np.array_equal(video.indices, video_stream(len(images), 600, seed=4).indices)
    runs = len(video.indices) / (1 + np.count_nonzero(np.diff(video.indices)))
    assert 15 < runs < 50
    assert np.abs(video.dx).max() <= 2 and np.abs(video.dy).max() <= 2
    assert video.gain.min() >= 0.9 and video.gain.max() <= 1.1
    frames = render(images, video)
    assert frames.shape == (600, 3, 16, 16) and frames.dtype == np.float32
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    # An unshifted frame is the object, brighter or darker, plus noise of std 0.02.
    f = int(np.flatnonzero((video.dx == 0) & (video.dy == 0))[0])
    img = images[video.indices[f]]
    inner = (frames[f] - np.clip(img * video.gain[f], 0, 1))[:, 2:-2, 2:-2]
    assert 0.01 < inner.std() < 0.03
    # A frame shifted by (dx, dy) shows the object moved by that much.
    g = int(np.flatnonzero((video.dx == 2) & (video.dy == 0))[0])
    moved = frames[g, :, 3:-3, 3:-3] / video.gain[g]
    assert np.abs(moved - images[video.indices[g]][:, 3:-3, 5:-1]).mean() < 0.03
