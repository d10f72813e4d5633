"""Run a verified cache bundle under ONNX Runtime: predict and gate.

:func:`load_cache_model` verifies the bundle's hashes, opens an ONNX Runtime
session, and replays the bundle's canary inputs, so that a model that loads
but computes something else is refused before it answers anything. No torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cachenet.bundle import Manifest, verify_bundle
from cachenet.exceptions import InputSpecError, IntegrityError
from cachenet.gate import Gate, outcome

log = logging.getLogger(__name__)

CANARY_ATOL = 1e-4


@dataclass
class Prediction:
    labels: np.ndarray  # int64, N
    confidence: np.ndarray  # float64, N
    local: np.ndarray  # bool, N: True where the gate lets the edge answer
    logits: np.ndarray  # float32, N x K


class CacheModel:
    """A cache bundle loaded into an ONNX Runtime session, with its gate."""

    def __init__(self, manifest: Manifest, session: object, precision: str) -> None:
        self.manifest = manifest
        self.session = session
        self.precision = precision
        spec = manifest.input
        self.input_name: str = spec["name"]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in spec["shape"][1:])
        self.dtype = np.dtype(spec["dtype"])
        gate = manifest.data.get("variant_gates", {}).get(precision, manifest.gate)
        self.gate = Gate(gate["score"], float(gate["threshold"]))
        # A partition model answers a few classes and "other", which always escalates.
        part = manifest.data.get("partition")
        self.partition: tuple[int, ...] | None = (tuple(int(c) for c in part["classes"])
                                                  if part else None)
        self.other_index: int | None = int(part["other_index"]) if part else None

    def covers(self, label: int) -> bool:
        """Can this model answer ``label`` itself? (Always, for a general model.)"""
        return self.partition is None or label in self.partition

    def answer_row(self, row: np.ndarray) -> tuple[int, float]:
        """(global label, gate confidence) for one row of logits: the per-request path.

        For a partition model, ``other`` gives confidence 0 (escalate) and the
        best of its own classes as the label to fall back on.
        """
        best = int(row.argmax())
        if self.partition is None:
            return best, self.gate.confidence_row(row)
        if best == self.other_index:
            inner = np.delete(row, best)
            return self.partition[int(inner.argmax())], 0.0
        return self.partition[best], self.gate.confidence_row(row)

    @property
    def version(self) -> str:
        return self.manifest.version

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Return ``x`` as a batch (N x C x H x W) or raise :class:`InputSpecError`."""
        if not isinstance(x, np.ndarray):
            raise InputSpecError(f"input must be a numpy array, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise InputSpecError(f"input dtype is {x.dtype}, the model takes {self.dtype}")
        if x.shape == self.input_shape:
            x = x[None]
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape:
            raise InputSpecError(f"input shape is {tuple(x.shape)}, the model takes "
                                 f"{self.input_shape} or N x {self.input_shape}")
        return np.ascontiguousarray(x)

    def logits(self, x: np.ndarray) -> np.ndarray:
        batch = self.check_input(x)
        return self.session.run(None, {self.input_name: batch})[0]  # type: ignore[attr-defined]

    def predict(self, x: np.ndarray) -> Prediction:
        logits = self.logits(x)
        labels, conf = outcome(logits, self.gate.score, self.manifest.data.get("partition"))
        return Prediction(labels, conf, conf >= self.gate.threshold, logits)


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise IntegrityError(f"{path.name} is not a loadable ONNX model: {exc}") from exc


def check_canary(model: CacheModel) -> None:
    """Replay the stored canary inputs; raise :class:`IntegrityError` on a mismatch.

    fp32 logits must match within 1e-4. Quantised kernels differ between CPUs,
    so an int8 model must give the stored int8 labels on all but one canary.
    """
    canary = model.manifest.data.get("canary")
    if not canary:
        return
    with np.load(model.manifest.root / canary["file"], allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files}
    got = model.logits(stored["x"])
    key = "logits" if model.precision == "fp32" else f"logits_{model.precision}"
    if key not in stored:
        raise IntegrityError(f"canary file has no expected outputs for {model.precision}")
    expected = stored[key]
    if got.shape != expected.shape or not np.isfinite(got).all():
        raise IntegrityError(f"canary outputs have shape {got.shape} (expected "
                             f"{expected.shape}) or are not finite")
    if model.precision == "fp32":
        diff = float(np.abs(got - expected).max())
        if diff > CANARY_ATOL:
            raise IntegrityError(f"canary check failed: logits differ from the stored ones by "
                                 f"{diff:.3g} (limit {CANARY_ATOL})")
    elif int((got.argmax(1) != expected.argmax(1)).sum()) > 1:
        raise IntegrityError(f"canary check failed: the {model.precision} model's labels differ "
                             "from the stored ones")


def load_cache_model(root: Path, *, precision: str = "fp32", threads: int | None = None,
                     canary: bool = True) -> CacheModel:
    """Verify the bundle at ``root`` and load its ``precision`` model into ONNX Runtime."""
    manifest = verify_bundle(Path(root))
    path = Path(root) / manifest.model_file(precision)
    model = CacheModel(manifest, _session(path, threads), precision)
    if canary:
        check_canary(model)
    log.info("loaded cache bundle %s version %s (%s)", manifest.name, manifest.version, precision)
    return model
