"""Export a torch model to ONNX, and check the export against torch on real data.

The exporter is always chosen explicitly: ``dynamo`` (``torch.onnx.export(...,
dynamo=True)``, torch.export-based, the maintained path) or ``torchscript``
(``dynamo=False``, the older tracer; faster to run, kept for models the dynamo
exporter cannot capture). Both give one input ``input`` (N x C x H x W, float32)
and one output ``logits`` (N x K) with a dynamic batch axis; with ``features=True``
a second output ``features`` (N x D): the input of the model's last linear layer
``fc``, which a head trained on the frozen model reads (:func:`with_features`).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cachenet.exceptions import ExportError

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"
EXPORTERS = ("dynamo", "torchscript")
#: fp32 parity tolerance between torch and ONNX Runtime logits.
PARITY_ATOL = 1e-4


@dataclass
class Parity:
    n: int
    max_abs_diff: float
    argmax_agreement: float

    @property
    def ok(self) -> bool:
        return self.argmax_agreement == 1.0 and self.max_abs_diff <= PARITY_ATOL


class WithFeatures(nn.Module):
    """A model's logits and the input of its last layer ``fc``: (logits, features)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        fc = getattr(model, "fc", None)
        if not isinstance(fc, nn.Linear):
            raise ExportError(f"{type(model).__name__} has no last linear layer 'fc' whose "
                              "input could be its features")
        body = copy.deepcopy(model)
        body.fc = nn.Identity()
        self.body, self.fc = body, fc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.fc(features), features


def feature_dim(model: nn.Module) -> int:
    """The width of :class:`WithFeatures`' features: ``fc``'s input."""
    return int(WithFeatures(model).fc.in_features)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path, *,
                exporter: str = "dynamo", opset: int = 18, features: bool = False) -> Path:
    """Write ``model`` to ``path`` as ONNX with a dynamic batch axis (and, with
    ``features``, its features as a second output)."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter '{exporter}'; choose one of {EXPORTERS}")
    model = (WithFeatures(model) if features else model).eval()
    outputs = [OUTPUT_NAME, FEATURES_NAME] if features else [OUTPUT_NAME]
    example = (torch.rand(2, *input_shape),)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The dynamo exporter logs a warning for every torchvision operator it cannot
    # register; there is no torchvision here, and nothing of ours uses one.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                arg = next(iter(_forward_arg_names(model)), "x")
                torch.onnx.export(model, example, str(path), dynamo=True, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=outputs,
                                  dynamic_shapes={arg: {0: torch.export.Dim("batch")}},
                                  external_data=False, verbose=False)
            else:
                torch.onnx.export(model, example, str(path), dynamo=False,
                                  opset_version=min(opset, 17), input_names=[INPUT_NAME],
                                  output_names=outputs,
                                  dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *outputs)})
    except Exception as exc:  # the exporters raise many types
        raise ExportError(f"{exporter} export of {type(model).__name__} failed: {exc}") from exc
    log.info("exported %s with the %s exporter to %s", type(model).__name__, exporter, path)
    return path


def _forward_arg_names(model: nn.Module) -> list[str]:
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return []
    return [n for n in params if n != "self"]


def onnx_logits(path: Path, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: np.ascontiguousarray(x[i:i + batch_size], np.float32)})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


@torch.no_grad()
def check_parity(model: nn.Module, path: Path, x: np.ndarray) -> Parity:
    """Compare torch and ONNX Runtime logits on the real batch ``x``."""
    ref = model.eval()(torch.from_numpy(x))
    ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
    got = onnx_logits(path, x)
    if got.shape != ref.shape:
        raise ExportError(f"ONNX output shape {got.shape} differs from torch {ref.shape}")
    return Parity(len(x), float(np.abs(got - ref).max()),
                  float((got.argmax(1) == ref.argmax(1)).mean()))


def export_checked(model: nn.Module, input_shape: tuple[int, ...], path: Path, x: np.ndarray, *,
                   exporter: str = "dynamo", features: bool = False) -> Parity:
    """Export, then fail with :class:`ExportError` unless parity holds on ``x``."""
    export_onnx(model, input_shape, path, exporter=exporter, features=features)
    parity = check_parity(model, path, x)
    if not parity.ok:
        raise ExportError(f"ONNX export disagrees with torch on {parity.n} inputs: max abs "
                          f"diff {parity.max_abs_diff:.3g} (limit {PARITY_ATOL}), argmax "
                          f"agreement {parity.argmax_agreement:.4f} (must be 1)")
    return parity
