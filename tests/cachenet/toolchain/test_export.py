import numpy as np
import onnx
import pytest
import torch

from cachenet.exceptions import ExportError
from cachenet.toolchain.export import (
    PARITY_ATOL,
    check_parity,
    export_checked,
    export_onnx,
    onnx_logits,
)
from cachenet.toolchain.full import arch_spec
from cachenet.toolchain.models import build_model
from cachenet.toolchain.quantize import quantize_int8


def small_model(splits, arch="tinycnn"):
    spec = arch_spec("resnet20", splits)
    spec.arch = arch
    torch.manual_seed(0)
    return build_model(spec).eval()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_has_dynamic_batch_and_parity(digits_splits, tmp_path, exporter):
    model = small_model(digits_splits)
    path = tmp_path / "m.onnx"
    parity = export_checked(model, digits_splits.input_shape, path,
                            digits_splits.test.x[:128], exporter=exporter)
    assert parity.ok and parity.max_abs_diff <= PARITY_ATOL and parity.n == 128
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    for n in (1, 37):
        assert onnx_logits(path, digits_splits.test.x[:n]).shape == (n, 10)


def test_parity_detects_a_different_model(digits_splits, tmp_path):
    model = small_model(digits_splits, "mlp")
    path = export_onnx(model, digits_splits.input_shape, tmp_path / "m.onnx",
                       exporter="torchscript")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    parity = check_parity(model, path, digits_splits.test.x[:64])
    assert not parity.ok and parity.max_abs_diff > PARITY_ATOL


def test_unknown_exporter(digits_splits, tmp_path):
    with pytest.raises(ExportError, match="unknown exporter"):
        export_onnx(small_model(digits_splits), (1, 8, 8), tmp_path / "m.onnx", exporter="x")


def test_int8_quantisation_shrinks_and_keeps_predictions(digits_splits, tmp_path):
    model = small_model(digits_splits, "mlp")
    from cachenet.toolchain.train import TrainConfig, fit

    fit(model, digits_splits.train, TrainConfig(epochs=10, lr=3e-3, optimizer="adam",
                                                 batch_size=64), progress=False)
    src = export_onnx(model, digits_splits.input_shape, tmp_path / "m.onnx",
                      exporter="torchscript")
    dst = quantize_int8(src, tmp_path / "m.int8.onnx", digits_splits.calib.x)
    assert dst.stat().st_size < src.stat().st_size
    fp32 = onnx_logits(src, digits_splits.test.x).argmax(1)
    int8 = onnx_logits(dst, digits_splits.test.x).argmax(1)
    # Quantisation moves logits a little; a broken quantiser (wrong scales or zero points)
    # agrees with fp32 at about chance, 0.1.
    assert np.mean(fp32 == int8) > 0.5
    with pytest.raises(ExportError, match="calibration inputs"):
        quantize_int8(src, tmp_path / "x.onnx", digits_splits.calib.x[:0])
