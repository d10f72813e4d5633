"""The committed reference models load and generate under every policy they support."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachenet.diffusion.generate import GenerateRequest, Generator
from cachenet.diffusion.nets import load_checkpoint

REFERENCE = Path(__file__).resolve().parents[3] / "bench" / "reference"


@pytest.fixture(scope="module")
def generator() -> Generator:
    paths = {a: REFERENCE / f"diffusion-{a}-cifar10.pt" for a in ("unet", "dit")}
    if not all(p.exists() for p in paths.values()):
        pytest.skip("the reference diffusion checkpoints are not in this checkout")
    return Generator({a: load_checkpoint(p) for a, p in paths.items()})


@pytest.mark.parametrize(("model", "policy", "params", "steps"), [
    ("unet", "deepcache", {"interval": 3}, 6), ("dit", "fora", {"interval": 2}, 4),
    ("dit", "l2c", {"threshold": 0.5}, 50)])
def test_reference_models_generate(generator, model, policy, params, steps):
    out = generator.run(GenerateRequest(model=model, label=3, count=1, steps=steps,
                                        policy=policy, params=params))
    assert out.images.shape == (1, 3, 32, 32) and out.images.dtype.name == "uint8"
    assert 0 < out.macs < out.macs_full and 0 < out.skipped < 1


def test_the_dit_carries_a_router_for_fifty_ddim_steps(generator):
    router = generator.models["dit"].l2c
    assert router is not None and router["steps"] == 50 and router["sampler"] == "ddim"
    assert generator.models["unet"].classes[0] == "airplane"
