"""Data sources: the embedded digits, image folders (directory or zip) and .npz.

:func:`load_splits` turns a dataset spec (``digits`` or a path) into seeded
train / calibration / test splits.
"""

from __future__ import annotations

import os
from pathlib import Path

from cachenet.exceptions import DatasetError
from cachenet.toolchain.data.base import (
    ArrayDataset,
    Normalization,
    Splits,
    make_splits,
    split_indices,
)

__all__ = ["ArrayDataset", "Normalization", "Splits", "default_cache_dir", "load_bundle_splits",
           "load_splits", "make_splits", "split_indices"]


def default_cache_dir() -> Path:
    """``$CACHENET_CACHE_DIR``, else ``.cachenet-cache`` in the working directory."""
    return Path(os.environ.get("CACHENET_CACHE_DIR", ".cachenet-cache"))


def load_splits(spec: str, *, seed: int = 0, cache_dir: Path | None = None,
                calib_fraction: float | None = None, test_fraction: float = 0.2,
                image_size: int | None = None, limit_per_class: int | None = None) -> Splits:
    """Load a data set by spec: ``digits``, a ``.npz`` file, or an image folder/zip."""
    if spec == "digits":
        from cachenet.toolchain.data.digits import load_digits_splits

        return load_digits_splits(seed=seed, calib_fraction=calib_fraction or 0.3,
                                  test_fraction=test_fraction)
    path = Path(spec)
    if not path.exists():
        raise DatasetError(f"dataset '{spec}' is neither 'digits' nor an existing path")
    if path.suffix == ".npz":
        from cachenet.toolchain.data.npz import load_npz_splits

        return load_npz_splits(path, seed=seed, calib_fraction=calib_fraction or 0.2,
                               test_fraction=test_fraction)
    if path.is_dir() or path.suffix == ".zip":
        from cachenet.toolchain.data.imagefolder import load_imagefolder_splits

        return load_imagefolder_splits(
            path, cache_dir=cache_dir if cache_dir is not None else default_cache_dir(),
            seed=seed, calib_fraction=calib_fraction or 0.1, test_fraction=test_fraction,
            image_size=image_size, limit_per_class=limit_per_class)
    raise DatasetError(f"dataset '{spec}': expected 'digits', a .npz file, a .zip or a directory")


def load_bundle_splits(spec: str, dataset: dict, *, cache_dir: Path | None = None,
                       seed: int | None = None) -> Splits:
    """The splits a bundle was built on, from its manifest's ``dataset`` section: its
    seed, and the share of the test split it calibrated on (so that its evaluation never
    reads a calibration image). ``seed``, when given, must be the manifest's."""
    built = int(dataset.get("seed", 0))
    if seed is not None and seed != built:
        raise DatasetError(f"the bundle was built with seed {built}, not {seed}: its "
                           "splits are the ones that seed makes")
    splits = load_splits(spec, seed=built, cache_dir=cache_dir)
    moved = dataset.get("calibration_from_test")
    if moved:
        splits = splits.calibrating_on_test(float(moved["share"]), int(moved["seed"]))
        if splits.info["calibration_from_test"]["n"] != moved["n"]:
            raise DatasetError(f"dataset '{spec}' is not the one the bundle was built on: "
                               f"its test split does not give the {moved['n']} "
                               "calibration images the manifest declares")
    return splits
