"""The embedded default: scikit-learn's bundled handwritten digits.

1,797 real 8x8 grey-scale scans of the digits 0-9 (UCI optdigits test set),
shipped inside scikit-learn, so it needs no network and no files.
"""

from __future__ import annotations

import numpy as np

from cachenet.exceptions import DatasetError
from cachenet.toolchain.data.base import Splits, make_splits


def load_digits_splits(*, seed: int = 0, calib_fraction: float = 0.3,
                       test_fraction: float = 0.2) -> Splits:
    """Seeded splits of the digits; pixels 0..16 are scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is a build dependency
        raise DatasetError("the embedded digits need scikit-learn: pip install "
                           "'cachenet[build]'") from exc
    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None, :, :]  # N x 1 x 8 x 8, values 0..16
    y = bunch.target.astype(np.int64)
    classes = [str(int(c)) for c in bunch.target_names]
    return make_splits("digits", x, y, classes, scale=1.0 / 16.0, seed=seed,
                       calib_fraction=calib_fraction, test_fraction=test_fraction,
                       info={"source": "sklearn.datasets.load_digits"})
