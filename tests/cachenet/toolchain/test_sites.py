"""Cutting models at their sites: the stages chain to the model, in torch and in ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cachenet.exceptions import ConfigError
from cachenet.layercache import LayerCascade
from cachenet.layercache.segments import SegmentRunner
from cachenet.toolchain.models import ModelSpec, build_model
from cachenet.toolchain.sites import TorchRunner, all_features, export_segments, staged


def model(arch: str, **kw):
    kwargs = {"in_channels": 3, "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3,
              "image_size": 16, **kw}
    torch.manual_seed(0)
    m = build_model(ModelSpec(arch, kwargs)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def x(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).random((n, 3, 16, 16), dtype=np.float32)


@pytest.mark.parametrize("arch,kw,sites", [("resnet20", {}, 8), ("resnet20", {"tta": "flip"}, 8),
                                           ("tinycnn", {}, 2), ("resnet18", {}, 7)])
def test_stages_chain_to_the_model(arch, kw, sites):
    m = model(arch, **kw)
    cut = staged(m)
    assert len(cut.site_names) == sites == len(cut.stages) - 1
    feats, logits = all_features(cut, x())
    with torch.no_grad():
        ref = m(torch.from_numpy(x())).numpy()
    assert np.abs(logits - ref).max() < 1e-5
    assert len(feats) == sites and all(f.shape[0] == 6 for f in feats)
    # A cascade with no rules runs the whole model, in torch, row for row.
    empty = LayerCascade(cut.site_names, [1] * sites, 10, [], 10)
    out = empty.run(TorchRunner(cut), x(), 6)
    assert np.abs(out.logits - ref).max() < 1e-5 and (out.by < 0).all()


def test_macs_add_up_to_the_model():
    from cachenet.toolchain.models import count_macs

    m = model("resnet20")
    sites, full = staged(m).cumulative_macs((3, 16, 16))
    assert full == count_macs(m, (3, 16, 16))
    assert sites == sorted(sites) and sites[-1] < full


def test_onnx_segments_equal_the_whole_model(tmp_path):
    m = model("tinycnn")
    cut = staged(m)
    paths = export_segments(cut, (3, 16, 16), tmp_path, "input", x())
    got = SegmentRunner.open(paths).chain(x(9))
    with torch.no_grad():
        ref = m(torch.from_numpy(x(9))).numpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-5


def test_a_model_that_cannot_be_cut_says_so():
    with pytest.raises(ConfigError, match="can cut ResNet"):
        staged(torch.nn.Linear(3, 3))
