"""Calibrate the label-shift adjusted gate (:mod:`cachenet.core.prior`) for a bundle.

The adjusted gate's confidence depends on the stream the prior has followed, so
it is calibrated on streams: the calibration split replayed in the workloads a
device sees (class runs of mean length 10 and 50, and independent draws), each
through the very :class:`~cachenet.core.prior.StreamPrior` the agent runs,
observing the full model's answers. At each input the edge answers when the
shipped gate is sure (as without the prior) or the adjusted gate is; the
threshold is the lowest at which the disagreement of the two together keeps
its Clopper-Pearson bound under ``1 - target`` (:mod:`cachenet.core.calibration`).
The guarantee is the union's (on CIFAR-10 the prior's own extra answers do not
pass 0.99 alone at any threshold), so the online audit pools the two as one step,
``model``, and drops the prior first when that step breaks the target.
An input appears once per workload, so the draws are not independent: the
online audit (:mod:`cachenet.core.audit`) is what holds the target on the live
stream.

``cachenet build`` writes the section; :func:`add_label_shift` adds it to a
bundle built before (``cachenet adapt``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from cachenet.core import calibration
from cachenet.core.bundle import repack, verify_bundle
from cachenet.core.cascade import Stage
from cachenet.core.prior import SECTION, PriorConfig, StreamPrior
from cachenet.core.runtime import load_cache_model

log = logging.getLogger(__name__)

#: The simulated workloads: mean class-run length (0: independent draws).
WORKLOADS = (10, 50, 0)


def class_runs(labels: np.ndarray, mean_run: int, rng: np.random.Generator) -> np.ndarray:
    """Every index of ``labels`` once, ordered in runs of one class (geometric lengths of
    mean ``mean_run``); ``mean_run`` 0 gives a random order."""
    if mean_run <= 0:
        return rng.permutation(len(labels))
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
    out: list[int] = []
    while pools:
        c = list(pools)[int(rng.integers(len(pools)))]
        take = int(rng.geometric(1.0 / mean_run))
        out.extend(pools[c][:take])
        pools[c] = pools[c][take:]
        if not pools[c]:
            del pools[c]
    return np.asarray(out, dtype=np.int64)


def replay(logits: np.ndarray, full_labels: np.ndarray, order: np.ndarray, stage: Stage,
           shipped: np.ndarray, config: PriorConfig) -> tuple[np.ndarray, np.ndarray]:
    """(score, label) of the edge at each input of ``order``: 1 where the shipped gate is
    sure, else the adjusted gate's confidence; the prior observes the full model."""
    prior = StreamPrior(shipped, config)
    scores = np.zeros(len(order))
    labels = np.zeros(len(order), dtype=np.int64)
    for i, j in enumerate(order):
        row = logits[j]
        label, conf = stage.read_row(row)
        if conf >= stage.gate.threshold:
            scores[i], labels[i] = 1.0, label
        else:
            adjusted = prior.answer_row(row)
            labels[i], scores[i] = adjusted if adjusted is not None else (label, 0.0)
        prior.observe(int(full_labels[j]))
    return scores, labels


def calibrate_section(logits: np.ndarray, full_labels: np.ndarray, y: np.ndarray, stage: Stage,
                      shipped: np.ndarray, *, target: float, delta: float = 0.05,
                      config: PriorConfig | None = None, seed: int = 0) -> dict[str, Any]:
    """The manifest's ``label_shift`` section, calibrated on the calibration split's
    cache-model ``logits``, full-model labels and true labels ``y`` (the workloads)."""
    config = config or PriorConfig(score=stage.gate.score)
    rng = np.random.default_rng(seed)
    scores, agree = [], []
    for mean_run in WORKLOADS:
        order = class_runs(np.asarray(y), mean_run, rng)
        s, lab = replay(logits, full_labels, order, stage, shipped, config)
        scores.append(s)
        agree.append(lab == full_labels[order])
    cal = calibration.calibrate_agreement(np.concatenate(scores), np.concatenate(agree),
                                          score=config.score, target=target, delta=delta)
    section = {**config.to_dict(), "threshold": cal.threshold,
               "prior": [float(p) for p in shipped], "calibration": cal.to_dict()}
    if cal.feasible:
        log.info("label-shift gate: threshold %.6f, %.1f%% of simulated stream inputs "
                 "answered (agreement %.4f, bound %.4f)", cal.threshold, 100 * cal.hit_rate,
                 cal.agreement, 1 - cal.disagreement_ucb)
    else:
        log.warning("label-shift gate: it answers nothing the shipped gate does not: %s",
                    cal.reason)
    return section


def shipped_prior(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The training split's class frequencies (every class at least once)."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
    return np.maximum(counts, 1) / max(1, np.maximum(counts, 1).sum())


def add_label_shift(bundle: Path, out: Path, *, dataset: str, seed: int | None = None,
                    target: float | None = None, cache_dir: Path | None = None
                    ) -> dict[str, Any]:
    """Write ``bundle`` with a calibrated ``label_shift`` section to ``out``."""
    from cachenet.toolchain.data import load_bundle_splits
    from cachenet.toolchain.layerbundle import full_model_of
    from cachenet.toolchain.train import predict_logits

    full, m = full_model_of(bundle)
    splits = load_bundle_splits(dataset, m.data["dataset"], cache_dir=cache_dir, seed=seed)
    model = load_cache_model(bundle)
    x = splits.calib.x
    logits = np.concatenate([model.logits(x[i:i + 512]) for i in range(0, len(x), 512)])
    full_labels = predict_logits(full, x).argmax(1)
    gate_cal = m.gate.get("calibration") or {}
    target = target or float(gate_cal.get("target", 0.99))
    stage = Stage.from_manifest(m.gate, m.partition)
    section = calibrate_section(logits, full_labels, splits.calib.y, stage,
                                shipped_prior(splits.train.y, len(m.classes)), target=target,
                                delta=float(gate_cal.get("delta", 0.05)),
                                seed=int(m.data["dataset"].get("seed", 0)))
    manifest = repack(bundle, out, fields={SECTION: section})
    verify_bundle(out)
    return {"version": manifest.version, **section["calibration"]}
