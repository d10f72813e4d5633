"""Arrays, normalisation and seeded splits shared by every data source.

Images are held as float32 NCHW arrays scaled to [0, 1]; that is the tensor the
cache model, the full model and the wire all see. Per-channel normalisation is
not applied to the arrays: it is measured on the training split, recorded in a
:class:`Normalization`, built into the models as their first layer, and written
to the bundle manifest, so nothing about the input is implicit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from cachenet.exceptions import DatasetError


@dataclass(frozen=True)
class Normalization:
    """How raw pixels become model input: ``((raw * scale) - mean) / std`` per channel.

    ``scale`` maps stored pixel values to [0, 1] (1/255 for 8-bit images, 1/16
    for the digits). Models take the [0, 1] tensor and subtract ``mean`` and
    divide by ``std`` themselves.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0 / 255.0

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "scale": self.scale,
                "applied": "in-model, on inputs already scaled to [0, 1]"}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(mean=tuple(d["mean"]), std=tuple(d["std"]), scale=float(d["scale"]))

    @classmethod
    def measure(cls, x: np.ndarray, scale: float) -> Normalization:
        """Per-channel mean and std of ``x`` (N, C, H, W, already in [0, 1])."""
        mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
        std = x.std(axis=(0, 2, 3), dtype=np.float64)
        std = np.where(std < 1e-6, 1.0, std)
        return cls(tuple(round(float(m), 6) for m in mean),
                   tuple(round(float(s), 6) for s in std), scale)


@dataclass
class ArrayDataset:
    """Images ``x`` (float32, N x C x H x W, in [0, 1]) and integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise DatasetError(f"images must be N x C x H x W, got shape {self.x.shape}")
        if len(self.x) != len(self.y):
            raise DatasetError(f"{len(self.x)} images but {len(self.y)} labels")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.classes)):
            raise DatasetError(
                f"labels must lie in [0, {len(self.classes) - 1}], "
                f"got [{self.y.min()}, {self.y.max()}]")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> ArrayDataset:
        return ArrayDataset(self.x[idx], self.y[idx], self.classes)


@dataclass
class Splits:
    """Train, calibration and test splits of one data set, with its provenance."""

    name: str
    train: ArrayDataset
    calib: ArrayDataset
    test: ArrayDataset
    normalization: Normalization
    info: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    def calibrating_on_test(self, fraction: float, seed: int = 0) -> Splits:
        """These splits with a seeded random ``fraction`` of the test split moved into
        the calibration split, and declared in :meth:`describe`. Calibration labels
        come from the full model, so any image it never trained on will do; a
        class-conditional bound needs several hundred a class. Evaluate on what stays."""
        if not 0.0 <= fraction < 1.0:
            raise DatasetError(f"the share of the test split to calibrate on must lie in "
                               f"[0, 1), got {fraction}")
        moved = round(fraction * len(self.test))
        if moved == 0:
            return self
        order = np.random.default_rng(seed).permutation(len(self.test))
        extra, rest = self.test.subset(order[:moved]), self.test.subset(order[moved:])
        calib = ArrayDataset(np.concatenate([self.calib.x, extra.x]),
                             np.concatenate([self.calib.y, extra.y]), self.calib.classes)
        return Splits(self.name, self.train, calib, rest, self.normalization,
                      {**self.info, "calibration_from_test": {"n": moved, "seed": seed,
                                                     "share": fraction}})

    def describe(self) -> dict:
        return {"name": self.name, "classes": self.classes,
                "input_shape": list(self.input_shape),
                "sizes": {"train": len(self.train), "calib": len(self.calib),
                          "test": len(self.test)},
                "normalization": asdict(self.normalization), **self.info}


def to_unit_float(raw: np.ndarray, scale: float) -> np.ndarray:
    """Stored pixels (any numeric dtype) to float32 in [0, 1]."""
    return (raw.astype(np.float32) * np.float32(scale)).clip(0.0, 1.0)


def split_indices(n: int, *, fractions: tuple[float, float], seed: int) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into train / calib / test.

    ``fractions`` are the calibration and test shares; the train split gets
    the rest. The same ``n``, fractions and seed always give the same split.
    """
    calib_frac, test_frac = fractions
    if not (0 < calib_frac < 1 and 0 <= test_frac < 1 and calib_frac + test_frac < 1):
        raise DatasetError(f"bad split fractions calib={calib_frac} test={test_frac}")
    perm = np.random.default_rng(seed).permutation(n)
    n_calib, n_test = round(n * calib_frac), round(n * test_frac)
    if n - n_calib - n_test < 1 or n_calib < 1:
        raise DatasetError(f"{n} examples are too few to split")
    return (np.sort(perm[n_calib + n_test:]), np.sort(perm[:n_calib]),
            np.sort(perm[n_calib:n_calib + n_test]))


def make_splits(name: str, x: np.ndarray, y: np.ndarray, classes: list[str], *,
                scale: float, seed: int, calib_fraction: float, test_fraction: float,
                x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                info: dict | None = None) -> Splits:
    """Build seeded splits from raw arrays.

    With ``x_test``/``y_test`` given (a data set that ships its own test split)
    the calibration split is carved out of ``x`` and the test split is kept as
    shipped; otherwise all three come from ``x``.
    """
    x = np.asarray(x)
    y = np.asarray(y).astype(np.int64)
    if x_test is not None and y_test is not None:
        tr, ca, _ = split_indices(len(x), fractions=(calib_fraction, 0.0), seed=seed)
        test = ArrayDataset(to_unit_float(np.asarray(x_test), scale),
                            np.asarray(y_test).astype(np.int64), classes)
    else:
        tr, ca, te = split_indices(len(x), fractions=(calib_fraction, test_fraction), seed=seed)
        test = ArrayDataset(to_unit_float(x[te], scale), y[te], classes)
    train = ArrayDataset(to_unit_float(x[tr], scale), y[tr], classes)
    calib = ArrayDataset(to_unit_float(x[ca], scale), y[ca], classes)
    norm = Normalization.measure(train.x, scale)
    return Splits(name, train, calib, test, norm,
                  {"seed": seed, "calib_fraction": calib_fraction, **(info or {})})
