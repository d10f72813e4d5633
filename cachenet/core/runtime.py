"""Run a verified cache bundle under ONNX Runtime: predict and gate.

:func:`load_cache_model` verifies the bundle's hashes, opens an ONNX Runtime
session, checks the model against its manifest (its input, and one logit per
class the manifest answers) and replays the bundle's canary inputs, so that a
model that loads but computes something else, or answers classes the manifest
does not name, is refused before it answers anything. ONNX Runtime's errors
become :class:`~cachenet.exceptions.IntegrityError` here. No torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cachenet.core.bundle import verify_bundle
from cachenet.core.cascade import Stage
from cachenet.core.gate import Gate
from cachenet.core.manifest import Manifest
from cachenet.core.prior import StreamPrior
from cachenet.exceptions import InputSpecError, IntegrityError

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
        #: this model's place in the cascade (:mod:`cachenet.core.cascade`): its gate and,
        #: for a partition model, the classes it answers ("other" always escalates)
        self.stage = Stage.from_manifest(gate, manifest.partition)
        self.gate: Gate = self.stage.gate
        self.partition: tuple[int, ...] | None = self.stage.classes
        features = manifest.features
        #: the model file's features output, when the bundle declares one
        self.features_name: str | None = features["name"] if features else None
        #: a head bundle's linear head on those features, (weight, bias): its answers
        self.head: tuple[np.ndarray, np.ndarray] | None = (
            read_head(manifest) if manifest.head else None)
        #: the bundle's layer caches, attached by the agent (cachenet.layercache.edge)
        self.layers: object | None = None
        #: the stream's class prior and its gate, attached by the agent (cachenet.core.prior)
        self.prior: StreamPrior | None = None

    def covers(self, label: int) -> bool:
        """Can this model answer ``label`` itself? (Always, for a general model.)"""
        return self.stage.covers(label)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def input_bytes(self) -> int:
        """Bytes of one input."""
        return int(np.prod(self.input_shape)) * self.dtype.itemsize

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
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InputSpecError("input contains NaN or infinite values")
        return np.ascontiguousarray(x)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.raw(self.check_input(x))

    def raw(self, batch: np.ndarray) -> np.ndarray:
        """The logits of a checked batch (the request path: no checks)."""
        feed = {self.input_name: batch}
        if self.head is None:
            return self.session.run(None, feed)[0]  # type: ignore[attr-defined]
        feats = self.session.run([self.features_name], feed)[0]  # type: ignore[attr-defined]
        return apply_head(feats, self.head)

    def features(self, batch: np.ndarray) -> np.ndarray:
        """The model file's features of a checked batch (what a head reads)."""
        if self.features_name is None:
            raise IntegrityError(f"bundle {self.manifest.name} declares no features output")
        return self.session.run([self.features_name],  # type: ignore[attr-defined]
                                {self.input_name: batch})[0]

    def predict(self, x: np.ndarray) -> Prediction:
        logits = self.logits(x)
        labels, conf = self.stage.read(logits)
        return Prediction(labels, conf, conf >= self.gate.threshold, logits)


def open_session(path: Path, threads: int | None = None, what: str = "ONNX model"):
    """An ONNX Runtime CPU session of ``path``; its failures become IntegrityError."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise IntegrityError(f"{path.name} is not a loadable {what}: {exc}") from exc


def _run(model: CacheModel, x: np.ndarray, what: str) -> np.ndarray:
    """``model.logits(x)`` at load time: any failure means the bundle cannot serve."""
    try:
        return np.asarray(model.logits(x))
    except InputSpecError as exc:
        raise IntegrityError(f"{what}: {exc}") from exc
    except Exception as exc:  # onnxruntime's own error types: they become ours here
        raise IntegrityError(f"{what}: the model does not run on the input the manifest "
                             f"describes: {type(exc).__name__}: {str(exc)[:300]}") from exc


def apply_head(features: np.ndarray, head: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A linear head's logits on ``features``: ``features @ weight.T + bias``."""
    weight, bias = head
    return (features @ weight.T + bias).astype(np.float32, copy=False)


def read_head(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """A head bundle's (weight, bias), checked: width x dim and width, finite."""
    file = manifest.head["file"]  # type: ignore[index]
    try:
        with np.load(manifest.root / file, allow_pickle=False) as f:
            weight, bias = np.asarray(f["weight"]), np.asarray(f["bias"])
    except Exception as exc:  # zipfile, numpy and pickle refusals, a missing array alike
        raise IntegrityError(f"head file '{file}' is not an .npz with arrays 'weight' and "
                             f"'bias': {type(exc).__name__}: {str(exc)[:200]}") from exc
    width, dim = manifest.output_width, manifest.features["dim"]  # type: ignore[index]
    if weight.shape != (width, dim) or bias.shape != (width,):
        raise IntegrityError(f"head file '{file}' holds weight {weight.shape} and bias "
                             f"{bias.shape}; the manifest needs ({width}, {dim}) and ({width},)")
    if weight.dtype.kind != "f" or bias.dtype.kind != "f" \
            or not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise IntegrityError(f"head file '{file}' holds values that are not finite floats")
    return weight.astype(np.float32), bias.astype(np.float32)


def check_model(model: CacheModel) -> None:
    """The model against its manifest: one input of the manifest's name, the features
    output it declares (of its width), and per input one finite logit for each class the
    manifest answers; else :class:`IntegrityError`."""
    inputs = [i.name for i in model.session.get_inputs()]  # type: ignore[attr-defined]
    if inputs != [model.input_name]:
        raise IntegrityError(f"the model's inputs are {inputs}, the manifest says "
                             f"['{model.input_name}']")
    if model.features_name is not None:
        outputs = [o.name for o in model.session.get_outputs()]  # type: ignore[attr-defined]
        if model.features_name not in outputs:
            raise IntegrityError(f"the model's outputs are {outputs}; the manifest's "
                                 f"features output '{model.features_name}' is not one")
    got = _run(model, np.zeros((1, *model.input_shape), model.dtype), "a zero input")
    width = model.manifest.output_width
    if got.shape != (1, width):
        raise IntegrityError(f"the model answers a zero input with logits of shape "
                             f"{got.shape}; the manifest needs (1, {width}): one per "
                             f"{'partition class and other' if model.partition else 'class'}")
    if not np.issubdtype(got.dtype, np.floating) or not np.isfinite(got).all():
        raise IntegrityError(f"the model answers a zero input with {got.dtype} logits that "
                             "are not all finite numbers")
    if model.features_name is not None:  # it ran above: the input is the model's
        feats = model.features(np.zeros((1, *model.input_shape), model.dtype))
        dim = model.manifest.features["dim"]  # type: ignore[index]
        if feats.shape != (1, dim):
            raise IntegrityError(f"the model's features have shape {feats.shape}; the "
                                 f"manifest says (1, {dim})")


def _read_canary(model: CacheModel, file: str) -> dict[str, np.ndarray]:
    try:
        with np.load(model.manifest.root / file, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as exc:  # zipfile, numpy and pickle refusals alike
        raise IntegrityError(f"canary file '{file}' is not a readable .npz of arrays: "
                             f"{type(exc).__name__}: {str(exc)[:200]}") from exc


def check_canary(model: CacheModel) -> None:
    """Replay the stored canary inputs; raise :class:`IntegrityError` on a mismatch.

    fp32 logits must match within 1e-4. Quantised kernels differ between CPUs,
    so an int8 model must give the stored int8 labels on all but one canary.
    """
    canary = model.manifest.data.get("canary")
    if not canary:
        return
    stored = _read_canary(model, canary["file"])
    if canary.get("inputs"):  # the inputs kept apart (a head shares its base's)
        stored.pop("x", None)
        stored |= {k: v for k, v in _read_canary(model, canary["inputs"]).items() if k == "x"}
    key = "logits" if model.precision == "fp32" else f"logits_{model.precision}"
    if "x" not in stored or key not in stored:
        raise IntegrityError(f"canary file has no inputs 'x' or no expected outputs '{key}' "
                             f"for {model.precision}")
    got = _run(model, stored["x"], "canary inputs")
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
    model = CacheModel(manifest, open_session(path, threads), precision)
    check_model(model)
    if canary:
        check_canary(model)
    log.info("loaded cache bundle %s version %s (%s)", manifest.name, manifest.version, precision)
    return model
