"""CACHENET_SEED_OFFSET shifts every training seed, and the keys trained models cache under."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cachenet.exceptions import ConfigError
from cachenet.toolchain.data import ArrayDataset
from cachenet.toolchain.seeds import SEED_OFFSET_ENV, key_parts, seed_offset, training_seed
from cachenet.toolchain.train import TrainConfig, fit


def test_the_offset_shifts_seeds_and_keys(monkeypatch):
    monkeypatch.delenv(SEED_OFFSET_ENV, raising=False)
    assert (seed_offset(), training_seed(3), key_parts()) == (0, 3, [])
    monkeypatch.setenv(SEED_OFFSET_ENV, " 17 ")
    assert (seed_offset(), training_seed(3), key_parts()) == (17, 20, ["seed-offset=17"])
    for bad in ("x", "1.5", "-1", str(2**31)):
        monkeypatch.setenv(SEED_OFFSET_ENV, bad)
        with pytest.raises(ConfigError, match=SEED_OFFSET_ENV):
            training_seed(0)


def test_training_takes_the_shifted_seed(monkeypatch):
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.random((16, 1, 4, 4), dtype=np.float32), rng.integers(0, 2, 16),
                        ["a", "b"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1, seed=3)
    monkeypatch.setenv(SEED_OFFSET_ENV, "5")
    assert fit(model, data, cfg, progress=False)["seed"] == 8
    monkeypatch.delenv(SEED_OFFSET_ENV)
    assert fit(model, data, cfg, progress=False)["seed"] == 3
