"""Arrays in a ``.npz`` file.

Required keys: ``x`` (N x H x W, N x H x W x C or N x C x H x W) and ``y``
(N integer labels). Optional: ``x_test``/``y_test`` (kept as the test split),
``classes`` (names). Integer pixels are read as 8-bit (scaled by 1/255);
floating-point pixels must already lie in [0, 1].
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cachenet.exceptions import DatasetError
from cachenet.toolchain.data.base import Splits, make_splits


def _to_nchw(x: np.ndarray, key: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4:
        if x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
            return x
        if x.shape[-1] in (1, 3, 4):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x
    raise DatasetError(f"'{key}' must have 3 or 4 dimensions, got shape {x.shape}")


def _scale_for(x: np.ndarray, key: str) -> float:
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise DatasetError(f"integer pixels in '{key}' must lie in 0..255")
        return 1.0 / 255.0
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise DatasetError(f"'{key}' holds NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise DatasetError(f"floating-point pixels in '{key}' must lie in [0, 1], "
                               f"got [{x.min():.3g}, {x.max():.3g}]")
        return 1.0
    raise DatasetError(f"'{key}' has unsupported dtype {x.dtype}")


def load_npz_splits(path: Path, *, seed: int = 0, calib_fraction: float = 0.2,
                    test_fraction: float = 0.2) -> Splits:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read {path} as .npz: {exc}") from exc
    missing = {"x", "y"} - arrays.keys()
    if missing:
        raise DatasetError(f"{path} lacks the key(s) {sorted(missing)}; "
                           f"it has {sorted(arrays)}")
    x = _to_nchw(arrays["x"], "x")
    scale = _scale_for(x, "x")
    y = arrays["y"]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"'y' must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(x) == 0:
        raise DatasetError(f"{path}: 'x' is empty")
    x_test = y_test = None
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DatasetError(f"{path} has only one of 'x_test' and 'y_test'; give both or neither")
    if "x_test" in arrays:
        x_test = _to_nchw(arrays["x_test"], "x_test")
        if len(x_test) == 0:
            raise DatasetError(f"{path}: 'x_test' is empty")
        if _scale_for(x_test, "x_test") != scale or x_test.shape[1:] != x.shape[1:]:
            raise DatasetError("'x_test' must have the same dtype kind and image shape as 'x'")
        y_test = arrays["y_test"]
        if (y_test.ndim != 1 or not np.issubdtype(y_test.dtype, np.integer)
                or len(y_test) != len(x_test)):
            raise DatasetError(f"'y_test' must be a 1-D integer array with one label per "
                               f"test image, got {y_test.dtype} {y_test.shape}")
    n_classes = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    classes = ([str(c) for c in arrays["classes"]] if "classes" in arrays
               else [str(i) for i in range(n_classes)])
    return make_splits(path.stem, x, y, classes, scale=scale, seed=seed,
                       calib_fraction=calib_fraction, test_fraction=test_fraction,
                       x_test=x_test, y_test=y_test, info={"source": str(path)})
