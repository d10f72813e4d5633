"""``cachenet generate`` as a user runs it: a real process against a cloud on port 0."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cachenet.diffusion.generate import Generator, image_grid
from cachenet.protocol.client import GenerateClient
from tests.generating import serve, tiny_models


@pytest.fixture(scope="module")
def cloud():
    with serve(Generator(tiny_models(), max_count=8)) as s:
        yield s


def run_generate(cloud, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cachenet", "generate", "--cloud",
                           cloud.target, *args], capture_output=True, text=True, timeout=120)


def test_generate_writes_the_grid_and_prints_what_it_cost(cloud, tmp_path):
    out = tmp_path / "grids" / "grid.png"
    proc = run_generate(cloud, "--model", "unet", "--label", "class2", "--count", "3",
                        "--seed", "5", "--steps", "4", "--policy", "deepcache", "--param",
                        "interval=2", "--param", "mode=uniform", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    with GenerateClient(cloud.target) as c:  # the same request, as the library makes it
        expected = c.generate(model="unet", label=2, count=3, seed=5, steps=4,
                              policy="deepcache", params={"interval": 2, "mode": "uniform"},
                              timeout=30)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == (2 * 18 + 2, 2 * 18 + 2)  # 3 images of 16 px: 2 x 2, 2 px apart
        np.testing.assert_array_equal(np.asarray(img), image_grid(expected.images))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["shape"] == [3, 3, 16, 16] and report["steps"] == 4
    assert report["macs_per_image"] == expected.timings["macs_per_image"]
    assert 0 < report["layers_skipped"] < 1
    for text in ("MACs per image", "without a step cache", "layers skipped", "compute",
                 f"wrote {out}"):
        assert text in proc.stdout


def test_grid_of_grey_images_scaled():
    images = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2) + 1
    grid = image_grid(images, pad=1, scale=2)
    assert grid.shape == (2 * 4, 2 * 7)  # one row of two, 1 px apart, every pixel 2 x 2
    assert grid[2:4, 2:4].tolist() == [[1, 1], [1, 1]] and grid[0, 0] == 0


@pytest.mark.parametrize("args,message", [
    (["--param", "interval"], "expected KEY=VALUE"),
    (["--count", "0"], "cloud answered INVALID_ARGUMENT: count must be in [1, 8], got 0"),
    (["--policy", "deepcache", "--param", "interval=fast"],
     "parameter 'interval' must be a int, got 'fast'"),
    (["--label", "zebra"], "'zebra' is not a class of model 'unet'"),
    (["--seed", "-1"], "seed cannot be -1"),
])
def test_generate_refuses_with_one_line(cloud, tmp_path, args, message):
    proc = run_generate(cloud, "--steps", "2", "--out", str(tmp_path / "g.png"), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "g.png").exists()
