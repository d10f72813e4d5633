"""Shared fixtures: small real data, and one digits bundle built once per session."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.zip"


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """Point ``CACHENET_CACHE_DIR`` (ours and that of every process we start) at a
    session directory, so that no test reads or writes the working directory's
    ``.cachenet-cache``: a daemon that labels replay data or trains partition
    models would otherwise leave them there."""
    before = os.environ.get("CACHENET_CACHE_DIR")
    os.environ["CACHENET_CACHE_DIR"] = str(tmp_path_factory.mktemp("cachenet-cache"))
    yield Path(os.environ["CACHENET_CACHE_DIR"])
    if before is None:
        del os.environ["CACHENET_CACHE_DIR"]
    else:
        os.environ["CACHENET_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def digits_splits():
    from cachenet.toolchain.data import load_splits

    return load_splits("digits", seed=0)


def write_digit_images(per_class: int, *, layout: str = "split") -> dict[str, bytes]:
    """Real digit scans as PNG files, keyed by their path in an image folder."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    files: dict[str, bytes] = {}
    counts: dict[int, int] = {}
    for img, label in zip(d.images, d.target, strict=True):
        i = counts.get(int(label), 0)
        if i >= per_class:
            continue
        counts[int(label)] = i + 1
        buf = io.BytesIO()
        Image.fromarray((img * 15).astype(np.uint8), mode="L").save(buf, format="PNG")
        split = ""
        if layout == "split":
            split = "test/" if i % 4 == 0 else "train/"
        files[f"{split}d{label}/{i:04d}.png"] = buf.getvalue()
    return files


@pytest.fixture
def digits_zip(tmp_path: Path) -> Path:
    path = tmp_path / "digits-images.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in write_digit_images(12).items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="session")
def cli_cache(tmp_path_factory) -> Path:
    """One CACHENET_CACHE_DIR for the CLI and demo tests, so models train once."""
    return tmp_path_factory.mktemp("cli-cache")


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory) -> tuple[Path, object]:
    """A digits bundle (with an int8 variant) built once, with short training.

    Its gate escalates half of the calibration inputs (budget mode), so the tests
    get both inputs the edge answers and inputs it escalates by construction,
    however well the models happened to train on this machine.
    """
    from cachenet.toolchain.build import build
    from cachenet.toolchain.train import TrainConfig

    root = tmp_path_factory.mktemp("bundle")
    report = build(dataset="digits", out=root / "digits", cache_dir=root / "cache",
                   full_config=TrainConfig(epochs=8, batch_size=64, lr=0.05, augment="crop"),
                   distill_config=TrainConfig(epochs=25, batch_size=64, lr=3e-3,
                                              optimizer="adam", weight_decay=1e-4),
                   exporter="torchscript", int8=True, progress=False, escalation_budget=0.5)
    assert report.calibration["mode"] == "budget" and report.calibration["hit_rate"] >= 0.5
    assert 0.0 < report.hit_rate < 1.0, "the fixture needs both sure and unsure inputs"
    return root / "digits", report


@pytest.fixture
def bundle_copy(digits_bundle, tmp_path: Path) -> Path:
    """A private copy of the session bundle that a test may damage."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(digits_bundle[0], dst)
    return dst


def require_cifar() -> Path:
    if not SHARED_CIFAR.exists():
        pytest.skip(f"CIFAR-10 zip not found at {SHARED_CIFAR} (../shared/data is absent)")
    return SHARED_CIFAR


@pytest.fixture(scope="session")
def layered_bundle(digits_bundle, tmp_path_factory) -> Path:
    """The digits bundle with layer caches fitted for the cloud and the edge."""
    from cachenet.toolchain.layerbundle import add_layer_caches
    from cachenet.toolchain.layerfit import LayerCacheConfig

    out = tmp_path_factory.mktemp("layered") / "digits-layered"
    add_layer_caches(digits_bundle[0], out, dataset="digits",
                     cfg=LayerCacheConfig(target=0.95, head_epochs=5, head_hidden=32))
    return out
