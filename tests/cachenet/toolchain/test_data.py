import zipfile
from pathlib import Path

import numpy as np
import pytest

from cachenet.exceptions import DatasetError
from cachenet.toolchain.data import load_bundle_splits, load_splits, split_indices
from cachenet.toolchain.data.imagefolder import load_imagefolder_arrays
from tests.conftest import require_cifar, write_digit_images


def test_digits_splits_are_seeded_disjoint_and_in_unit_range(digits_splits):
    s = digits_splits
    assert s.input_shape == (1, 8, 8)
    assert len(s.train) + len(s.calib) + len(s.test) == 1797
    assert s.train.x.dtype == np.float32
    assert s.train.x.min() >= 0.0 and s.train.x.max() <= 1.0
    again = load_splits("digits", seed=0)
    np.testing.assert_array_equal(again.calib.x, s.calib.x)
    other = load_splits("digits", seed=1)
    assert not np.array_equal(other.calib.y, s.calib.y)
    tr, ca, te = split_indices(1797, fractions=(0.3, 0.2), seed=0)
    assert not (set(tr) & set(ca) or set(tr) & set(te) or set(ca) & set(te))


def test_normalization_is_measured_on_train_and_recorded(digits_splits):
    norm = digits_splits.normalization
    assert norm.mean[0] == pytest.approx(float(digits_splits.train.x.mean()), abs=1e-5)
    assert norm.to_dict()["scale"] == 1 / 16


def test_imagefolder_zip_and_directory_give_the_same_arrays(digits_zip, tmp_path):
    cache = tmp_path / "cache"
    from_zip = load_imagefolder_arrays(digits_zip, cache_dir=cache)
    assert from_zip["x"].shape[1:] == (1, 8, 8) and from_zip["x"].dtype == np.uint8  # grey
    rgb = load_imagefolder_arrays(digits_zip, cache_dir=None, mode="RGB")
    assert rgb["x"].shape[1:] == (3, 8, 8)
    assert list(from_zip["classes"]) == [f"d{i}" for i in range(10)]
    assert len(from_zip["y_test"]) == 30 and len(from_zip["y"]) == 90
    assert list(cache.glob("data/*.npz")), "decoded arrays were not cached"
    folder = tmp_path / "folder"
    with zipfile.ZipFile(digits_zip) as zf:
        zf.extractall(folder)
    from_dir = load_imagefolder_arrays(folder, cache_dir=None)
    np.testing.assert_array_equal(from_zip["x"], from_dir["x"])
    splits = load_splits(str(digits_zip), cache_dir=cache)
    assert len(splits.test) == 30 and len(splits.calib) == 9


def test_imagefolder_cache_is_reused(digits_zip, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load_imagefolder_arrays(digits_zip, cache_dir=cache)
    import cachenet.toolchain.data.imagefolder as mod

    def fail(*a, **k):
        raise AssertionError("decoded again although the cache holds this input")

    monkeypatch.setattr(mod, "decode_folder", fail)
    again = load_imagefolder_arrays(digits_zip, cache_dir=cache)
    assert again["x"].shape[0] == 90


def test_flat_class_folders_get_drawn_splits(tmp_path):
    folder = tmp_path / "flat"
    for name, data in write_digit_images(6, layout="flat").items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    s = load_splits(str(folder), cache_dir=None, calib_fraction=0.2, test_fraction=0.2)
    assert len(s.train) + len(s.calib) + len(s.test) == 60


@pytest.mark.parametrize("problem", ["not-an-image", "mixed-sizes", "bad-zip", "empty"])
def test_bad_image_folders_fail_clearly(tmp_path, problem):
    path = tmp_path / "bad.zip"
    files = write_digit_images(2)
    if problem == "not-an-image":
        files["train/d0/broken.png"] = b"this is not a png"
        match = "cannot decode image 'train/d0/broken.png'"
    elif problem == "mixed-sizes":
        from io import BytesIO

        from PIL import Image

        buf = BytesIO()
        Image.new("L", (9, 9)).save(buf, format="PNG")
        files["train/d1/big.png"] = buf.getvalue()
        match = "pass image_size"
    elif problem == "empty":
        files = {"readme.txt": b"no images"}
        match = "no images"
    if problem == "bad-zip":
        path.write_bytes(b"PK\x03\x04 definitely truncated")
        match = "not a readable zip"
    else:
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    with pytest.raises(DatasetError, match=match):
        load_imagefolder_arrays(path, cache_dir=None)


def test_npz_roundtrip_and_errors(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    good = tmp_path / "d.npz"
    np.savez(good, x=(d.images * 15).astype(np.uint8), y=d.target)
    s = load_splits(str(good))
    assert s.input_shape == (1, 8, 8) and len(s.classes) == 10
    nhwc = tmp_path / "nhwc.npz"
    np.savez(nhwc, x=np.repeat((d.images[..., None] / 16.0), 3, axis=3), y=d.target)
    assert load_splits(str(nhwc)).input_shape == (3, 8, 8)
    cases = {
        "nokey.npz": ({"x": d.images}, "lacks the key"),
        "nan.npz": ({"x": np.full((10, 8, 8), np.nan), "y": np.zeros(10, int)}, "NaN"),
        "range.npz": ({"x": np.full((10, 8, 8), 3.0), "y": np.zeros(10, int)}, r"\[0, 1\]"),
        "labels.npz": ({"x": np.zeros((10, 8, 8)), "y": np.zeros(10)}, "integer array"),
    }
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DatasetError, match=match):
            load_splits(str(tmp_path / name))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="cannot read"):
        load_splits(str(tmp_path / "junk.npz"))


def test_unknown_dataset_spec():
    with pytest.raises(DatasetError, match="neither 'digits' nor an existing path"):
        load_splits("no-such-dataset")


def test_shared_cifar_zip_reads_as_image_folder(tmp_path):
    path = require_cifar()
    arrays = load_imagefolder_arrays(Path(path), cache_dir=None, limit_per_class=3)
    assert arrays["x"].shape == (30, 3, 32, 32)
    assert arrays["x_test"].shape == (30, 3, 32, 32)
    assert list(arrays["classes"])[:3] == ["airplane", "automobile", "bird"]


def test_zip_junk_and_wrapping_folders_are_handled(tmp_path):
    path = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in write_digit_images(3, layout="flat").items():
            zf.writestr(f"mydata/{name}", data)
            zf.writestr(f"__MACOSX/mydata/{name}", b"resource fork, not an image")
            zf.writestr(f"mydata/{name.rsplit('/', 1)[0]}/._hidden.png", b"AppleDouble")
    arrays = load_imagefolder_arrays(path, cache_dir=None)
    assert len(arrays["y"]) == 30 and len(arrays["classes"]) == 10


def test_npz_test_split_must_be_complete_and_well_formed(tmp_path):
    x = np.zeros((20, 8, 8), np.uint8)
    y = np.arange(20) % 2
    cases = {
        "half.npz": ({"x": x, "y": y, "x_test": x}, "only one of"),
        "onehot.npz": ({"x": x, "y": y, "x_test": x, "y_test": np.eye(2)[y]}, "y_test"),
        "empty.npz": ({"x": x, "y": y, "x_test": x[:0], "y_test": y[:0]}, "empty"),
    }
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DatasetError, match=match):
            load_splits(str(tmp_path / name))
    np.savez(tmp_path / "ok.npz", x=x, y=y, x_test=x[:6], y_test=y[:6])
    assert len(load_splits(str(tmp_path / "ok.npz")).test) == 6


def test_calibrating_on_test_moves_a_seeded_share_and_declares_it(digits_splits):
    s = digits_splits
    moved = s.calibrating_on_test(0.5, seed=3)
    n = round(0.5 * len(s.test))
    assert len(moved.calib) == len(s.calib) + n and len(moved.test) == len(s.test) - n
    assert moved.train is s.train
    # What moved came from the test split, what stayed did not move, and nothing is lost.
    rows = {x.tobytes() for x in s.test.x}
    extra = moved.calib.x[len(s.calib):]
    assert all(x.tobytes() in rows for x in extra)
    assert not {x.tobytes() for x in extra} & {x.tobytes() for x in moved.test.x}
    assert sorted(np.concatenate([moved.calib.y[len(s.calib):], moved.test.y]).tolist()) \
        == sorted(s.test.y.tolist())
    assert moved.describe()["calibration_from_test"] == {"n": n, "seed": 3, "share": 0.5}
    assert moved.describe()["sizes"]["calib"] == len(s.calib) + n
    again = s.calibrating_on_test(0.5, seed=3)
    assert np.array_equal(again.test.x, moved.test.x)
    assert s.calibrating_on_test(0.0) is s


@pytest.mark.parametrize("share", [-0.1, 1.0, 2.0])
def test_calibrating_on_all_or_none_of_the_test_split_is_refused(digits_splits, share):
    with pytest.raises(DatasetError, match="share of the test split"):
        digits_splits.calibrating_on_test(share)


def test_a_bundles_splits_follow_its_manifest_and_refuse_another_seed():
    built = load_splits("digits", seed=2).calibrating_on_test(0.5, seed=4)
    info = built.describe()
    again = load_bundle_splits("digits", info)
    assert np.array_equal(again.calib.x, built.calib.x)
    assert np.array_equal(again.test.x, built.test.x)
    assert np.array_equal(load_bundle_splits("digits", info, seed=2).test.x, built.test.x)
    with pytest.raises(DatasetError, match="built with seed 2, not 0"):
        load_bundle_splits("digits", info, seed=0)
