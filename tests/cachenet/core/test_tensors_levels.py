"""Inputs as their uint8 pixel levels: lossless, or not at all."""

from __future__ import annotations

import numpy as np

from cachenet.core import tensors


def test_frames_of_8_bit_pixels_round_trip_bit_for_bit():
    raw = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    x = raw.astype(np.float32) * np.float32(1 / 255)  # as cachenet's data loaders make it
    levels = tensors.to_levels(x, 1 / 255)
    assert levels is not None and np.array_equal(levels, raw)
    assert np.array_equal(tensors.from_levels(levels, 1 / 255), x)


def test_anything_else_stays_float():
    x = np.random.default_rng(0).random((1, 3, 4, 4), dtype=np.float32)
    assert tensors.to_levels(x, 1 / 255) is None  # not made of levels
    assert tensors.to_levels(np.full((2, 2), 2.0, np.float32), 1 / 255) is None  # > 255
    assert tensors.to_levels(np.full((2, 2), -1 / 255, np.float32), 1 / 255) is None
    assert tensors.to_levels(np.zeros((2, 2), np.float64), 1 / 255) is None
    assert tensors.to_levels(np.zeros((2, 2), np.float32), None) is None


def test_the_scale_comes_from_a_float32_input_spec_only():
    spec = {"dtype": "float32", "normalization": {"scale": 1 / 255}}
    assert tensors.input_scale(spec) == 1 / 255
    assert tensors.input_scale({**spec, "dtype": "uint8"}) is None
    assert tensors.input_scale({"dtype": "float32"}) is None
    assert tensors.input_scale({**spec, "normalization": {"scale": "x"}}) is None
    assert tensors.input_scale({**spec, "normalization": {"scale": 0}}) is None
