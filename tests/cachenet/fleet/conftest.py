"""Fixtures of the fleet's tests: the digits bundle's replay data and general model."""

from __future__ import annotations

import pytest

from cachenet.fleet.replay import ReplayData
from cachenet.toolchain.models import load_checkpoint


@pytest.fixture(scope="module")
def replay(digits_bundle, digits_splits):
    """The cloud's replay data for the digits bundle, labelled by its full model."""
    from cloud_server.model import load_full_model

    full, _ = load_full_model(digits_bundle[0], device="cpu")
    return ReplayData.from_splits(digits_splits, full)


@pytest.fixture(scope="module")
def base(digits_bundle):
    """The digits bundle's general cache model, in torch."""
    model, _, _ = load_checkpoint(digits_bundle[0] / "full" / "cache.pt")
    return model.eval()
