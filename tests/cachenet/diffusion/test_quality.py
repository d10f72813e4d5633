from __future__ import annotations

import numpy as np

from cachenet.diffusion.quality import frechet, psnr, stats


def test_frechet_distance_of_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4)) * 2 + 1
    assert abs(frechet(*stats(a), *stats(a))) < 1e-9
    # |mu|^2 = 4; tr(I + 4I - 2 * 2I) = 4
    assert abs(frechet(*stats(a), *stats(b)) - 8.0) < 0.3


def test_psnr():
    a = np.zeros((2, 3, 4, 4), np.uint8)
    b = a.copy()
    b[:, :, 0, 0] = 255  # one pixel in 16 per channel: mse = 255^2 / 16
    assert abs(psnr(a, b) - 10 * np.log10(16)) < 1e-9
    assert psnr(a, a) > 90
