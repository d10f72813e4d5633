"""Image-folder data in a directory or a zip file.

Layouts (the usual "image folder" convention)::

    train/<class>/<name>.jpg|png      test/<class>/<name>.jpg|png
    <class>/<name>.jpg|png            (no split folders: splits are drawn)

All images must have the same size unless ``image_size`` is given, in which
case they are resized. ``mode`` ``auto`` (the default) keeps grey-scale data
grey (1 channel) and makes everything else RGB, as the first image decides;
``L`` or ``RGB`` force one. Decoded arrays are cached as uint8 ``.npz`` files under
the cache directory, keyed by the archive's content, so decoding happens once.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from cachenet.exceptions import DatasetError
from cachenet.toolchain.data.base import Splits, make_splits

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
SPLIT_NAMES = ("train", "test")


def _is_junk(rel: PurePosixPath) -> bool:
    """macOS resource forks and hidden files that archivers leave behind."""
    return "__MACOSX" in rel.parts or any(part.startswith(".") for part in rel.parts)


def _members(path: Path) -> Iterator[tuple[PurePosixPath, bytes | Path]]:
    """Yield (relative posix path, payload) for every image file."""
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            rel = PurePosixPath(p.relative_to(path).as_posix())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not _is_junk(rel):
                yield rel, p
        return
    try:
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                rel = PurePosixPath(info.filename)
                if _is_junk(rel):
                    continue
                if not info.is_dir() and rel.suffix.lower() in IMAGE_SUFFIXES:
                    yield rel, zf.read(info)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{path} is not a readable zip file: {exc}") from exc


def _split_and_class(rel: PurePosixPath) -> tuple[str | None, str]:
    parts = [p for p in rel.parts[:-1] if p]
    # Tolerate wrapping folders (a zip of a folder): look at the last two levels.
    if len(parts) >= 2 and parts[-2] in SPLIT_NAMES:
        return parts[-2], parts[-1]
    if len(parts) == 1 or (len(parts) >= 2 and parts[-2] not in SPLIT_NAMES):
        return None, parts[-1]
    raise DatasetError(f"'{rel}' does not follow split/class/image or class/image")


def _decode(payload: bytes | Path, rel: PurePosixPath, image_size: int | None,
            mode: str) -> tuple[np.ndarray, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        src = payload if isinstance(payload, Path) else io.BytesIO(payload)
        with Image.open(src) as img:
            if mode == "auto":  # the first image decides: grey stays grey
                mode = "L" if len(img.getbands()) == 1 else "RGB"
            img = img.convert(mode)
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"cannot decode image '{rel}': {exc}") from exc
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), mode


def decode_folder(path: Path, *, image_size: int | None = None, mode: str = "auto",
                  limit_per_class: int | None = None) -> dict[str, np.ndarray]:
    """Decode every image; returns uint8 arrays keyed x/y per split and the classes."""
    by_split: dict[str | None, list[tuple[np.ndarray, str]]] = {}
    counts: dict[tuple[str | None, str], int] = {}
    shape = None
    for rel, payload in _members(path):
        split, cls = _split_and_class(rel)
        key = (split, cls)
        if limit_per_class is not None and counts.get(key, 0) >= limit_per_class:
            continue
        arr, mode = _decode(payload, rel, image_size, mode)
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise DatasetError(f"image '{rel}' is {arr.shape[2]}x{arr.shape[1]} but earlier "
                               f"ones are {shape[2]}x{shape[1]}; pass image_size to resize")
        counts[key] = counts.get(key, 0) + 1
        by_split.setdefault(split, []).append((arr, cls))
    if not by_split:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {path}")
    if None in by_split and len(by_split) > 1:
        raise DatasetError(f"{path} mixes split folders with class folders at the top level")
    classes = sorted({c for items in by_split.values() for _, c in items})
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split, items in by_split.items():
        prefix = "" if split in (None, "train") else "_test"
        out[f"x{prefix}"] = np.stack([a for a, _ in items])
        out[f"y{prefix}"] = np.array([index[c] for _, c in items], dtype=np.int64)
    if "x" not in out:
        raise DatasetError(f"{path} has a test split but no train split")
    return out


def _fingerprint(path: Path, image_size: int | None, mode: str,
                 limit_per_class: int | None) -> str:
    h = hashlib.sha256(f"{image_size}|{mode}|{limit_per_class}|v1".encode())
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def load_imagefolder_arrays(path: Path, *, cache_dir: Path | None, image_size: int | None = None,
                            mode: str = "auto", limit_per_class: int | None = None
                            ) -> dict[str, np.ndarray]:
    """Decoded uint8 arrays, read from the cache when this exact input was seen before."""
    if not path.exists():
        raise DatasetError(f"data path {path} does not exist")
    cached = None
    if cache_dir is not None:
        fp = _fingerprint(path, image_size, mode, limit_per_class)
        cached = cache_dir / "data" / f"{path.stem}-{fp}.npz"
        if cached.exists():
            log.info("reading decoded images from %s", cached)
            with np.load(cached, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
    log.info("decoding images from %s (once; cached afterwards)", path)
    arrays = decode_folder(path, image_size=image_size, mode=mode,
                           limit_per_class=limit_per_class)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(cached)
    return arrays


def load_imagefolder_splits(path: Path, *, cache_dir: Path | None, seed: int = 0,
                            calib_fraction: float = 0.1, test_fraction: float = 0.2,
                            image_size: int | None = None, mode: str = "auto",
                            limit_per_class: int | None = None) -> Splits:
    arrays = load_imagefolder_arrays(path, cache_dir=cache_dir, image_size=image_size,
                                     mode=mode, limit_per_class=limit_per_class)
    classes = [str(c) for c in arrays["classes"]]
    return make_splits(path.stem, arrays["x"], arrays["y"], classes, scale=1.0 / 255.0,
                       seed=seed, calib_fraction=calib_fraction, test_fraction=test_fraction,
                       x_test=arrays.get("x_test"), y_test=arrays.get("y_test"),
                       info={"source": str(path)})
