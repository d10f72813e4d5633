"""``cachenet build``: from a data set and a full model to a calibrated, verified cache bundle.

:func:`build` runs the whole toolchain and returns a :class:`BuildReport`:

1. load seeded train / calibration / test splits (:mod:`cachenet.toolchain.data`);
2. obtain the full model: the user's, or trained and cached (:mod:`cachenet.toolchain.full`);
3. distil the cache model from the full model's outputs (:mod:`cachenet.toolchain.distill`);
4. export it to ONNX and check parity with torch (:mod:`cachenet.toolchain.export`);
5. calibrate the gate on the calibration split against the full model's
   answers, computed with the exported model as the edge will run it
   (:mod:`cachenet.core.calibration`), and check it on the test split; then the
   label-shift adjusted gate on streams replayed over the same split
   (:mod:`cachenet.toolchain.adapt`);
6. optionally quantise to int8 (:mod:`cachenet.toolchain.quantize`);
7. write and re-verify the bundle (:mod:`cachenet.core.bundle`, :mod:`cachenet.core.runtime`);
8. time both models at batch 1 in the same run (:mod:`cachenet.toolchain.timing`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cachenet.core import calibration as calib_mod
from cachenet.core.bundle import write_bundle
from cachenet.core.cascade import Stage
from cachenet.core.gate import Gate, score
from cachenet.core.prior import SECTION as PRIOR_SECTION
from cachenet.core.runtime import load_cache_model
from cachenet.toolchain.adapt import calibrate_section, shipped_prior
from cachenet.toolchain.data import Splits, default_cache_dir, load_splits
from cachenet.toolchain.distill import (
    cache_spec,
    default_cache_arch,
    default_cache_knobs,
    obtain_cache_model,
)
from cachenet.toolchain.export import (
    FEATURES_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    export_checked,
    feature_dim,
    onnx_logits,
)
from cachenet.toolchain.full import FullModel, obtain_full_model
from cachenet.toolchain.models import ModelSpec, count_macs, save_checkpoint
from cachenet.toolchain.timing import onnx_batch1_us, torch_batch1_us
from cachenet.toolchain.train import TrainConfig, accuracy, predict_logits

log = logging.getLogger(__name__)

N_CANARY = 16
N_PARITY = 256


@dataclass
class BuildReport:
    bundle: str
    dataset: dict[str, Any]
    full_accuracy: float
    cache_accuracy: float
    cache_agreement: float  # with the full model, on every test input (no gate)
    system_accuracy: float  # edge answers where the gate accepts, full model elsewhere
    threshold: float
    score: str
    hit_rate: float  # test split
    agreement: float  # test split, among edge-answered inputs
    calibration: dict[str, Any]
    parity_max_abs_diff: float
    parity_argmax_agreement: float
    full_macs: int | None
    cache_macs: int
    macs_ratio: float | None
    bundle_bytes: int
    cache_onnx_us: float
    full_torch_us: float
    full_source: str
    cache_source: str
    target_met_on_test: bool | None = None  # agreement mode: test agreement >= target
    full_tta: str = "none"  # the full model's test-time augmentation, as served
    full_single_pass_accuracy: float | None = None  # without it, when it is on
    int8: dict[str, Any] | None = None
    #: per class of the full model's answer: at calibration (with certification) and on
    #: the test split (:func:`_class_summary`)
    classes: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _single_pass_accuracy(fm: FullModel, splits: Splits) -> float | None:
    """The full model's test accuracy without its test-time augmentation, if it has one."""
    tta = getattr(fm.model, "tta", "none")
    if tta == "none":
        return None
    fm.model.tta = "none"
    try:
        return accuracy(predict_logits(fm.model, splits.test.x), splits.test.y)
    finally:
        fm.model.tta = tta


def _full_files(full: FullModel, cache_model: torch.nn.Module, cache_spec: ModelSpec,
                work: Path) -> dict[str, Path]:
    """The cloud's files: the full model as the server loads it, and the cache model's
    torch weights, which the cloud fine-tunes into specialised models."""
    cache = work / "cache.pt"
    save_checkpoint(cache, cache_model, cache_spec, {})
    if full.spec is None:  # TorchScript: ship the file as it is
        return {"full/model.ts": Path(full.meta["path"]), "full/cache.pt": cache}
    path = work / "full.pt"
    save_checkpoint(path, full.model, full.spec, {k: v for k, v in full.meta.items()
                                                  if k in ("test_accuracy", "config")})
    return {"full/model.pt": path, "full/cache.pt": cache}


def _evaluate(conf: np.ndarray, cache_lab: np.ndarray, full_lab: np.ndarray, y: np.ndarray,
              threshold: float) -> dict[str, float]:
    ev = calib_mod.evaluate(conf, cache_lab == full_lab, threshold)
    local = conf >= threshold
    system = np.where(local, cache_lab, full_lab)
    return {**ev, "cache_accuracy": float((cache_lab == y).mean()),
            "system_accuracy": float((system == y).mean())}


#: How the gate's threshold is calibrated to the agreement target: ``marginal`` bounds
#: the disagreement over all the edge's answers; ``class`` also holds every class of the
#: full model's answer to it (:func:`~cachenet.core.calibration.calibrate_classwise`).


def _calibrate(conf: np.ndarray, agree: np.ndarray, full_labels: np.ndarray,
               num_classes: int, *, score_kind: str, target: float, delta: float,
               escalation_budget: float | None,
               calibration: str = "marginal") -> calib_mod.Calibration:
    if escalation_budget is not None:
        cal = calib_mod.calibrate_budget(conf, agree, score=score_kind,
                                         escalation_budget=escalation_budget, delta=delta)
    else:
        cal = calib_mod.calibrate_to_target(conf, agree, full_labels, num_classes,
                                            calibration=calibration, score=score_kind,
                                            target=target, delta=delta)
        if calibration == "class":
            return cal  # it reports its classes itself
    cal.classes = calib_mod.class_report(conf, agree, full_labels, num_classes,
                                         cal.threshold, target=target, delta=delta)
    return cal


def _class_summary(rows: list[dict]) -> dict[str, Any]:
    """The classes of a :func:`~cachenet.core.calibration.class_report`: the worst
    agreement among those the edge answers, and which are certified."""
    answered = [r for r in rows if r["agreement"] is not None]
    worst = min(answered, key=lambda r: r["agreement"]) if answered else None
    return {"worst_class": None if worst is None else worst["class"],
            "worst_agreement": None if worst is None else worst["agreement"],
            "certified": [r["class"] for r in rows if r["status"] == "certified"],
            "uncertified": [r["class"] for r in rows if r["status"] != "certified"]}


def _int8_variant(onnx_path: Path, splits: Splits, full_calib: np.ndarray,
                  full_test: np.ndarray, fp32_test_acc: float, *, score_kind: str,
                  target: float, delta: float, escalation_budget: float | None,
                  calibration: str, work: Path) -> tuple[Path, dict[str, Any]]:
    from cachenet.toolchain.quantize import quantize_int8

    q_path = quantize_int8(onnx_path, work / "model.int8.onnx", splits.calib.x[:512])
    cal_logits = onnx_logits(q_path, splits.calib.x)
    cal = _calibrate(score(cal_logits, score_kind), cal_logits.argmax(1) == full_calib,
                     full_calib, len(splits.classes), score_kind=score_kind, target=target,
                     delta=delta, escalation_budget=escalation_budget,
                     calibration=calibration)
    test_logits = onnx_logits(q_path, splits.test.x)
    ev = _evaluate(score(test_logits, score_kind), test_logits.argmax(1), full_test,
                   splits.test.y, cal.threshold)
    info = {"file": "model.int8.onnx", "accuracy": ev["cache_accuracy"],
            "accuracy_change": ev["cache_accuracy"] - fp32_test_acc,
            "bytes": q_path.stat().st_size, "fp32_bytes": onnx_path.stat().st_size,
            "size_ratio": q_path.stat().st_size / onnx_path.stat().st_size,
            "gate": {"score": score_kind, "threshold": cal.threshold,
                     "calibration": cal.to_dict()},
            "hit_rate": ev["hit_rate"], "agreement": ev["agreement"]}
    return q_path, info


def build(*, dataset: str, out: Path, full: str = "resnet20", full_weights: Path | None = None,
          cache_arch: str | None = None, cache_widths: tuple[int, ...] | None = None,
          cache_depth: int | None = None, cache_hidden: tuple[int, ...] | None = None,
          full_config: TrainConfig | None = None, distill_config: TrainConfig | None = None,
          score_kind: str = "max_softmax", target: float = 0.99, delta: float = 0.05,
          escalation_budget: float | None = None, exporter: str = "dynamo",
          int8: bool = False, seed: int = 0, cache_dir: Path | None = None,
          name: str | None = None, progress: bool = True,
          limit_per_class: int | None = None, image_size: int | None = None,
          full_kwargs: dict | None = None, full_tta: str = "auto",
          reference_dir: Path | None = None,
          cached_teacher: bool | None = None, calibration: str = "marginal",
          calibrate_on_test: float = 0.0) -> BuildReport:
    """Build a cache bundle at ``out``; see the module docstring for the steps. Trained
    models are reused from ``cache_dir``, else from ``reference_dir`` when given.
    ``calibration``: one of
    :data:`~cachenet.core.calibration.CALIBRATIONS`; ``calibrate_on_test``: the share of
    the test split to move into the calibration split (after training, which never
    sees either; declared in the manifest's ``dataset``)."""
    calib_mod.check_calibration(calibration)
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    splits = load_splits(dataset, seed=seed, cache_dir=cache_dir,
                         limit_per_class=limit_per_class, image_size=image_size)
    log.info("data: %s", splits.describe())
    fm = obtain_full_model(splits, full=full, weights=full_weights, full_kwargs=full_kwargs,
                           cfg=full_config, cache_dir=cache_dir, progress=progress, tta=full_tta,
                           reference_dir=reference_dir)
    tta = getattr(fm.model, "tta", "none")
    arch = cache_arch or default_cache_arch(splits)
    knobs = default_cache_knobs(splits, arch)
    knobs.update({k: v for k, v in {"widths": cache_widths, "depth": cache_depth,
                                    "hidden": cache_hidden}.items() if v is not None})
    spec = cache_spec(splits, arch, **knobs)
    cache_model, cache_meta = obtain_cache_model(splits, fm, spec, cfg=distill_config,
                                                 cache_dir=cache_dir, progress=progress,
                                                 reference_dir=reference_dir,
                                                 cached_teacher=cached_teacher)
    splits = splits.calibrating_on_test(calibrate_on_test, seed)
    num_classes = len(splits.classes)
    full_calib = predict_logits(fm.model, splits.calib.x).argmax(1)
    full_test_logits = predict_logits(fm.model, splits.test.x)
    full_test = full_test_logits.argmax(1)

    with tempfile.TemporaryDirectory(prefix="cachenet-build-") as tmp:
        work = Path(tmp)
        onnx_path = work / "model.onnx"
        parity = export_checked(cache_model, splits.input_shape, onnx_path,
                                splits.test.x[:N_PARITY], exporter=exporter, features=True)
        # Calibrate and evaluate the exported model: what the edge will run.
        cal_logits = onnx_logits(onnx_path, splits.calib.x)
        cal = _calibrate(score(cal_logits, score_kind), cal_logits.argmax(1) == full_calib,
                         full_calib, num_classes, score_kind=score_kind, target=target,
                         delta=delta, escalation_budget=escalation_budget,
                         calibration=calibration)
        if not cal.feasible:
            log.warning("no threshold meets agreement %.3f with confidence %.2f on %d "
                        "calibration inputs: the edge will escalate everything", target,
                        1 - delta, cal.n)
        test_logits = onnx_logits(onnx_path, splits.test.x)
        test_conf = score(test_logits, score_kind)
        ev = _evaluate(test_conf, test_logits.argmax(1), full_test, splits.test.y,
                       cal.threshold)
        test_classes = calib_mod.class_report(test_conf, test_logits.argmax(1) == full_test,
                                              full_test, num_classes, cal.threshold,
                                              target=target, delta=delta)
        if escalation_budget is None and cal.feasible and ev["agreement"] < target:
            log.warning("agreement on the test split is %.4f, below the target %.4f",
                        ev["agreement"], target)
        label_shift = calibrate_section(  # to the agreement target, whatever the gate's mode
            cal_logits, full_calib, splits.calib.y, Stage(Gate(score_kind, cal.threshold)),
            shipped_prior(splits.train.y, len(splits.classes)), target=target, delta=delta,
            seed=seed)
        canary_x = np.ascontiguousarray(splits.test.x[:N_CANARY])
        canary = {"x": canary_x, "logits": test_logits[:N_CANARY]}
        files = {"model.onnx": onnx_path, "canary.npz": work / "canary.npz"}
        variants: dict[str, str] = {}
        int8_info = None
        if int8:
            q_path, int8_info = _int8_variant(
                onnx_path, splits, full_calib, full_test, ev["cache_accuracy"],
                score_kind=score_kind, target=target, delta=delta,
                escalation_budget=escalation_budget, calibration=calibration, work=work)
            files["model.int8.onnx"] = q_path
            variants["int8"] = "model.int8.onnx"
            canary["logits_int8"] = onnx_logits(q_path, canary_x)
        np.savez(work / "canary.npz", **canary)
        files.update(_full_files(fm, cache_model, spec, work))
        cache_macs = count_macs(cache_model, splits.input_shape)
        full_macs = count_macs(fm.model, splits.input_shape) if fm.spec is not None else None
        c, h, w = splits.input_shape
        fields = {
            "name": name or f"{splits.name}-{arch}",
            "input": {"name": INPUT_NAME, "shape": [-1, c, h, w], "dtype": "float32",
                      "range": [0.0, 1.0], "layout": "NCHW",
                      "normalization": splits.normalization.to_dict()},
            "output": {"name": OUTPUT_NAME, "shape": [-1, len(splits.classes)],
                       "kind": "logits",
                       # what a head specialised on the frozen cache model reads
                       "features": {"name": FEATURES_NAME, "dim": feature_dim(cache_model)}},
            "classes": splits.classes,
            "model": {"file": "model.onnx", "precision": "fp32", "exporter": exporter,
                      "arch": spec.to_dict(), "macs": cache_macs},
            "variants": variants,
            "gate": {"score": score_kind, "threshold": cal.threshold,
                     "calibration": cal.to_dict(),
                     "test": {**{k: ev[k] for k in ("n", "hit_rate", "agreement")},
                              "classes": test_classes}},
            "variant_gates": {"int8": int8_info["gate"]} if int8_info else {},
            "canary": {"file": "canary.npz", "n": N_CANARY},
            "full_model": {"files": [p for p in files if p.startswith("full/model")],
                           "tta": tta,
                           "cache_checkpoint": "full/cache.pt",
                           "spec": fm.spec.to_dict() if fm.spec else None,
                           "format": "torchscript" if fm.spec is None else "cachenet-checkpoint",
                           "macs": full_macs, "source": fm.source},
            "metrics": {"full_accuracy": accuracy(full_test_logits, splits.test.y),
                        "cache_accuracy": ev["cache_accuracy"],
                        "system_accuracy": ev["system_accuracy"]},
            "dataset": splits.describe(),
        }
        fields[PRIOR_SECTION] = label_shift
        manifest = write_bundle(out, fields, files)
    loaded = load_cache_model(out)  # re-verify what was written, canaries included
    cache_us = onnx_batch1_us(out / manifest.model_file(), splits.test.x)
    full_us = torch_batch1_us(fm.model, splits.test.x, threads=1)
    bundle_bytes = sum(e["bytes"] for n, e in manifest.files.items() if not n.startswith("full/"))
    return BuildReport(
        bundle=str(out), dataset=splits.describe(),
        full_accuracy=fields["metrics"]["full_accuracy"], cache_accuracy=ev["cache_accuracy"],
        cache_agreement=ev["overall_agreement"],
        system_accuracy=ev["system_accuracy"], threshold=cal.threshold, score=score_kind,
        hit_rate=ev["hit_rate"], agreement=ev["agreement"], calibration=cal.to_dict(),
        parity_max_abs_diff=parity.max_abs_diff,
        parity_argmax_agreement=parity.argmax_agreement, full_macs=full_macs,
        cache_macs=cache_macs, macs_ratio=(cache_macs / full_macs) if full_macs else None,
        bundle_bytes=bundle_bytes, cache_onnx_us=cache_us, full_torch_us=full_us,
        full_source=fm.source, cache_source=cache_meta["source"], int8=int8_info,
        target_met_on_test=(None if escalation_budget is not None or not cal.feasible
                            else bool(ev["agreement"] >= target)),
        full_tta=tta, full_single_pass_accuracy=_single_pass_accuracy(fm, splits),
        classes={"calibration": cal.mode, "calib": _class_summary(cal.classes or []),
                 "test": _class_summary(test_classes)},
        extras={"version": loaded.version, "torch_threads": torch.get_num_threads(),
                "full_train": fm.meta.get("train"), "cache_train": cache_meta.get("train")})
