import numpy as np
import pytest
import torch

from cachenet.exceptions import IntegrityError, ManifestError
from cloud_server import load_full_model, pick_device


def test_cloud_loads_the_full_model_saved_with_the_bundle(digits_bundle, digits_splits):
    root, report = digits_bundle
    model, manifest = load_full_model(root, device="cpu")
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)  # CPU
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # folded
    with torch.no_grad():
        logits = model(torch.from_numpy(digits_splits.test.x)).numpy()
    # The build measured the same model unfolded: at most one near-tie may flip.
    n = len(digits_splits.test.y)
    assert np.mean(logits.argmax(1) == digits_splits.test.y) == pytest.approx(
        report.full_accuracy, abs=1.01 / n)
    assert manifest.data["full_model"]["spec"]["arch"] == "resnet20"


def test_cloud_refuses_a_tampered_full_model(bundle_copy):
    path = bundle_copy / "full" / "model.pt"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(IntegrityError, match=r"full/model\.pt"):
        load_full_model(bundle_copy)


def test_bundle_without_full_model(bundle_copy):
    import json

    m = json.loads((bundle_copy / "manifest.json").read_text())
    m.pop("full_model")
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="carries no full model"):
        load_full_model(bundle_copy)


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected


def test_the_full_model_is_loaded_where_the_server_will_run_it(digits_bundle):
    model, _ = load_full_model(digits_bundle[0])
    assert next(model.parameters()).device.type == pick_device().type
