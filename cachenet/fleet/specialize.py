"""Specialised cache models: CacheNet's partition models, chosen, compared and written.

A camera sees a few classes at a time. A *partition model* answers a group of
classes ``S`` and has one extra output, ``other``, for everything else; on a
stream drawn from ``S`` it is far surer of itself than the general model, so it
answers more at the same agreement target, and its ``other`` output always
escalates. How one is made (fine-tuned from the general model, by default) is
:mod:`cachenet.fleet.partition`; the data it learns from and is judged on,
:mod:`cachenet.fleet.replay`.

* :func:`active_classes` reads the group off a class histogram;
* :func:`heldout_like` draws held-out data like the agent's recent inputs, and
  :func:`compare` calibrates the candidate (and a current partition model) at
  the agreement target on one draw (with a share of other classes mixed in, a
  guard for when the stream drifts), keeps the general model at its shipped
  threshold, and measures their hit rates on another draw, run as the agent
  runs them: an unsure partition model hands over to the general one;
* :func:`write_partition_bundle` writes the bundle the agents load: a whole
  model, or for a head on the general model's features (the ``head`` trainer) a
  head bundle (:func:`write_head_bundle`) whose model file is the general
  model's own, so that a push carries the head's kilobytes alone;
* :func:`bundle_logits`: any bundle's logits, heads included.

The orchestration (window of escalations, triggers, library, push) is the
cloud's: :mod:`cloud_server.specializer`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from cachenet.core import calibration as calib_mod
from cachenet.core import cascade
from cachenet.core.bundle import repack, write_bundle
from cachenet.core.gate import Gate
from cachenet.core.manifest import Manifest, read_manifest
from cachenet.core.runtime import apply_head, load_cache_model
from cachenet.exceptions import ConfigError
from cachenet.fleet.replay import ReplayData
from cachenet.toolchain.export import INPUT_NAME, OUTPUT_NAME, export_checked, onnx_logits

log = logging.getLogger(__name__)

N_CANARY = 16


def normalise_histogram(hist: Mapping[int, float] | np.ndarray, num_classes: int) -> np.ndarray:
    """A probability vector over ``num_classes`` from counts (unknown classes dropped)."""
    if isinstance(hist, np.ndarray):
        v = hist.astype(np.float64).copy()
    else:
        v = np.zeros(num_classes)
        for k, n in hist.items():
            if 0 <= int(k) < num_classes:
                v[int(k)] += float(n)
    total = v.sum()
    return v / total if total > 0 else v


def active_classes(hist: np.ndarray, *, coverage: float = 0.85, max_classes: int = 4,
                   min_share: float = 0.08) -> tuple[int, ...]:
    """The classes an agent sees now: the fewest, most frequent ones (each at least
    ``min_share`` of ``hist``, at most ``max_classes``) that cover ``coverage``;
    a histogram of predicted labels also holds a few mistakes, which this leaves out."""
    order = np.argsort(-hist, kind="stable")
    chosen: list[int] = []
    for c in order:
        if hist[c] < min_share or len(chosen) >= max_classes:
            break
        chosen.append(int(c))
        if hist[chosen].sum() >= coverage:
            break
    return tuple(sorted(chosen))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


#: Share of the held-out split that calibration draws come from; evaluation draws
#: come from the rest, so the two never share an input.
CALIB_SHARE = 0.7


def heldout_like(hist: np.ndarray, replay: ReplayData, n: int, *, uniform_share: float = 0.0,
                 half: int = 0, seed: int = 0) -> np.ndarray:
    """Indices into the held-out split, drawn like an agent's inputs.

    Classes (by the full model's label) follow ``hist``; ``uniform_share`` of
    the draws ignore it, so that a threshold calibrated on them also guards
    against inputs from outside the partition, which is where a stream goes
    when it drifts. ``half`` 0 draws from the calibration part of the split
    (:data:`CALIB_SHARE`), 1 from the evaluation part.
    """
    rng = np.random.default_rng(seed)
    k = replay.num_classes
    mix = (1 - uniform_share) * hist + uniform_share * np.full(k, 1.0 / k)
    in_calib = (np.arange(len(replay.hold_full)) % 10) < round(10 * CALIB_SHARE)
    mine = in_calib if half == 0 else ~in_calib
    pools = [np.flatnonzero(mine & (replay.hold_full == c)) for c in range(k)]
    sizes = np.array([len(p) for p in pools], dtype=np.float64)
    mix = np.where(sizes > 0, mix, 0.0)
    mix = mix / mix.sum()
    # As many draws as keep the mix without repeating an input.
    n = int(min(n, *(sizes[mix > 0] / mix[mix > 0])))
    counts = rng.multinomial(n, mix)
    # Without replacement (a repeated input would count twice in a bound that assumes
    # independent draws): a class asks for at most the inputs it has.
    return rng.permutation(np.concatenate([
        rng.choice(p, min(c, len(p)), replace=False)
        for p, c in zip(pools, counts, strict=True) if c > 0]))


@dataclass
class Scored:
    """One model's logits on the calibration draw and on the evaluation draw."""

    calib: np.ndarray
    eval: np.ndarray
    partition: Mapping[str, Any] | None = None


@dataclass
class Comparison:
    classes: tuple[int, ...]
    threshold: float  # the candidate's, calibrated on the calibration draw
    candidate_hit_rate: float
    candidate_agreement: float | None  # None where it answers nothing
    current_hit_rate: float
    current_agreement: float | None
    n_calib: int
    n_eval: int
    calibration: dict[str, Any]

    @property
    def better(self) -> bool:
        return self.candidate_hit_rate > self.current_hit_rate

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "better": self.better}


def calibrate_answerable(conf: np.ndarray, agree: np.ndarray, *, score_kind: str,
                         target: float, delta: float, full_labels: np.ndarray | None = None,
                         calibration: str = "marginal") -> calib_mod.Calibration:
    """Calibrate among the inputs a model may answer: not ``other`` (confidence 0); with
    ``calibration="class"`` (:data:`~cachenet.core.calibration.CALIBRATIONS`), class by
    class of ``full_labels`` too: the promise for any mix of a context's classes."""
    calib_mod.check_calibration(calibration)
    ok = conf > 0
    if not ok.any():
        return calib_mod.Calibration.answers_nothing(
            score_kind, "agreement", target, delta, len(conf),
            "the model calls every calibration input 'other'")
    if calibration == "class" and full_labels is None:
        raise ConfigError("class calibration needs the full model's labels")
    groups = np.zeros(len(conf), np.int64) if full_labels is None else \
        np.asarray(full_labels, np.int64)
    return calib_mod.calibrate_to_target(conf[ok], agree[ok], groups[ok], int(groups.max()) + 1,
                                         calibration=calibration, score=score_kind,
                                         target=target, delta=delta)


@dataclass
class AgentAnswers:
    """How the agent answers the evaluation draw with a model active."""

    calibration: calib_mod.Calibration  # the active model's
    labels: np.ndarray  # what the edge answers, where it does
    local: np.ndarray  # answered at the edge: by the model, or handed over to the general one
    own: np.ndarray  # answered by the model itself


def answer_as_agent(model: Scored, general: Scored, general_threshold: float, *,
                    full_calib: np.ndarray, score_kind: str, target: float,
                    delta: float, calibration: str = "marginal") -> AgentAnswers:
    """How the agent would answer the evaluation draw with ``model`` active.

    A partition model's threshold is calibrated on the calibration draw; the general
    model keeps the threshold it shipped with. The answers are the agent's cascade
    (:mod:`cachenet.core.cascade`): an unsure partition model hands over to the general
    model, which answers if it is sure.
    """
    general_stage = cascade.Stage(Gate(score_kind, general_threshold))
    if model.partition is None:  # the general model runs at the threshold it shipped with
        cal = calib_mod.Calibration(score_kind, general_threshold, "shipped", target, delta,
                                    0, 0, 0.0, None, 1.0, True,
                                    "the general model keeps the threshold it shipped with")
        stage = general_stage
    else:
        lab_c, conf_c = cascade.read(model.calib, score_kind, model.partition)
        cal = calibrate_answerable(conf_c, lab_c == full_calib, score_kind=score_kind,
                                   target=target, delta=delta, full_labels=full_calib,
                                   calibration=calibration)
        stage = cascade.Stage.from_manifest({"score": score_kind, "threshold": cal.threshold},
                                            model.partition)
    answers = cascade.answer_batch(stage, model.eval, general_stage, general.eval)
    return AgentAnswers(cal, answers.labels, answers.local, answers.own)


def system_outcome(model: Scored, general: Scored, general_threshold: float, *,
                   full_calib: np.ndarray, full_eval: np.ndarray, score_kind: str,
                   target: float, delta: float, calibration: str = "marginal"
                   ) -> tuple[calib_mod.Calibration, dict[str, float]]:
    """:func:`answer_as_agent`, summed up: the calibration and ``{hit_rate, agreement}``."""
    a = answer_as_agent(model, general, general_threshold, full_calib=full_calib,
                        score_kind=score_kind, target=target, delta=delta,
                        calibration=calibration)
    n = int(a.local.sum())
    return a.calibration, {"hit_rate": n / len(a.local), "agreement":
                           float((a.labels == full_eval)[a.local].mean()) if n else None}


def compare(candidate: Scored, current: Scored, general: Scored, general_threshold: float, *,
            full_calib: np.ndarray, full_eval: np.ndarray, score_kind: str, target: float,
            delta: float, calibration: str = "marginal") -> Comparison:
    """Candidate against the agent's current model, both calibrated to ``target`` on the
    calibration draw (``calibration``: :data:`~cachenet.core.calibration.CALIBRATIONS`)
    and run as the agent
    would on the evaluation draw."""
    kw = {"full_calib": full_calib, "full_eval": full_eval, "score_kind": score_kind,
          "target": target, "delta": delta, "calibration": calibration}
    cal, cand = system_outcome(candidate, general, general_threshold, **kw)
    _, cur = system_outcome(current, general, general_threshold, **kw)
    classes = tuple(candidate.partition["classes"]) if candidate.partition else ()
    return Comparison(classes, cal.threshold, cand["hit_rate"], cand["agreement"],
                      cur["hit_rate"], cur["agreement"], len(full_calib), len(full_eval),
                      cal.to_dict())


def bundle_logits(root: Path, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The logits of the bundle at ``root`` on ``x``, as an agent computes them (a head
    bundle's head on its model's features)."""
    model = load_cache_model(root, canary=False)
    x = np.ascontiguousarray(x, np.float32)
    return np.concatenate([model.raw(x[i:i + batch_size])
                           for i in range(0, len(x), batch_size)])


def _partition_fields(base: Manifest, classes: tuple[int, ...], trainer: str) -> dict[str, Any]:
    return {
        "name": f"{base.name}-p{'-'.join(map(str, classes))}",
        "input": {**base.input, "name": INPUT_NAME},
        "classes": base.classes,
        "partition": {"classes": list(classes), "other_index": len(classes),
                      "names": [base.classes[c] for c in classes],
                      "base_version": base.version, "trainer": trainer},
        "variants": {}, "variant_gates": {},
        "gate": {"score": base.gate["score"], "threshold": calib_mod.NEVER},
        "dataset": base.data.get("dataset"),
    }


def write_head_bundle(out: Path, weight: np.ndarray, bias: np.ndarray, base: Manifest,
                      classes: tuple[int, ...], *, canary_x: np.ndarray,
                      trainer: str = "head") -> Manifest:
    """A partition bundle that is a linear head (``weight``, ``bias``: its logits are
    ``features @ weight.T + bias``) on ``base``'s model file, which it holds byte for
    byte; not yet calibrated (see :func:`write_partition_bundle`)."""
    if base.features is None:
        raise ConfigError(f"bundle {base.name} {base.version} declares no features output "
                          "for a head to read; rebuild it with this cachenet")
    width, dim = len(classes) + 1, int(base.features["dim"])
    weight, bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
    if weight.shape != (width, dim) or bias.shape != (width,):
        raise ConfigError(f"a head for {len(classes)} classes on {dim} features is "
                          f"({width}, {dim}) and ({width},), not {weight.shape} and {bias.shape}")
    # The canary inputs are the base's own file where it has one (the device holds it);
    # the head's file holds its expected outputs alone.
    shared = (base.data.get("canary") or {}).get("file")
    if shared is not None and (base.data["canary"].get("inputs") is None):
        with np.load(base.root / shared, allow_pickle=False) as f:
            canary = np.ascontiguousarray(f["x"], np.float32)
    else:
        shared, canary = None, np.ascontiguousarray(canary_x[:N_CANARY], np.float32)
    feats = load_cache_model(base.root, canary=False).features(canary)
    with tempfile.TemporaryDirectory(prefix="cachenet-head-") as tmp:
        work = Path(tmp)
        np.savez(work / "head.npz", weight=weight, bias=bias)
        logits = apply_head(feats, (weight, bias))
        files = {"model.onnx": base.root / base.model_file("fp32"),
                 "head.npz": work / "head.npz"}
        if shared is not None:
            np.savez(work / "head-canary.npz", logits=logits)
            files |= {"canary.npz": base.root / shared,
                      "head-canary.npz": work / "head-canary.npz"}
            canary_field = {"file": "head-canary.npz", "inputs": "canary.npz",
                            "n": len(canary)}
        else:
            np.savez(work / "canary.npz", x=canary, logits=logits)
            files["canary.npz"] = work / "canary.npz"
            canary_field = {"file": "canary.npz", "n": len(canary)}
        fields = {
            **_partition_fields(base, classes, trainer),
            "output": {"name": OUTPUT_NAME, "shape": [-1, width], "kind": "logits",
                       "features": base.features},
            "model": {**base.data["model"], "file": "model.onnx", "precision": "fp32"},
            "head": {"file": "head.npz", "base": base.version,
                     "from_base": ["model.onnx", *(["canary.npz"] if shared else [])]},
            "canary": canary_field,
        }
        return write_bundle(out, fields, files)


def write_partition_bundle(out: Path, model: nn.Module, base: Manifest,
                           classes: tuple[int, ...], *, canary_x: np.ndarray,
                           exporter: str = "dynamo", trainer: str = "finetune") -> Manifest:
    """Export ``model`` as a bundle answering ``classes`` + ``other``, not yet calibrated.

    Its threshold is above every score (it escalates everything) until
    :func:`calibrated_copy` writes a copy calibrated for one agent. A
    :class:`~cachenet.fleet.partition.HeadPartition` becomes a head bundle.
    """
    from cachenet.fleet.partition import HeadPartition

    if isinstance(model, HeadPartition):
        return write_head_bundle(out, model.fc.weight.detach().numpy(),
                                 model.fc.bias.detach().numpy(), base, classes,
                                 canary_x=canary_x, trainer=trainer)
    shape = tuple(int(d) for d in base.input["shape"][1:])
    with tempfile.TemporaryDirectory(prefix="cachenet-partition-") as tmp:
        work = Path(tmp)
        onnx_path = work / "model.onnx"
        export_checked(model, shape, onnx_path, canary_x, exporter=exporter)
        canary = np.ascontiguousarray(canary_x[:N_CANARY])
        np.savez(work / "canary.npz", x=canary, logits=onnx_logits(onnx_path, canary))
        fields = {
            **_partition_fields(base, classes, trainer),
            "output": {"name": OUTPUT_NAME, "shape": [-1, len(classes) + 1], "kind": "logits"},
            "model": {**base.data["model"], "file": "model.onnx", "precision": "fp32",
                      "exporter": exporter},
            "canary": {"file": "canary.npz", "n": len(canary)},
        }
        return write_bundle(out, fields, {"model.onnx": onnx_path,
                                          "canary.npz": work / "canary.npz"})


def calibrated_copy(bundle: Path, out: Path, comparison: Comparison) -> Manifest:
    """A copy of a partition bundle with the threshold ``comparison`` calibrated."""
    m = read_manifest(bundle)
    gate = {"score": m.gate["score"], "threshold": comparison.threshold,
            "calibration": comparison.calibration, "specialization": comparison.to_dict()}
    return repack(bundle, out, fields={"gate": gate})
