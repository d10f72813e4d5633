"""Specialised cache models: CacheNet's partition models, trained without human labels.

A camera sees a few classes at a time. A *partition model* is the general cache
model fine-tuned to a group of classes ``S`` with one extra output, ``other``,
for everything else; on a stream drawn from ``S`` it is far surer of itself
than the general model, so it answers more at the same agreement target, and
its ``other`` output always escalates.

* :func:`active_classes` reads the group off a class histogram;
* :func:`train_partition` fine-tunes from the general model on the cloud's
  replay data and the agent's hard (escalated) examples, both labelled by the
  full model, never by people: on replay data it matches the full model's
  probabilities, folded into the partition's outputs (:func:`partition_probs`);
* :func:`heldout_like` draws held-out data like the agent's recent inputs, and
  :func:`compare` calibrates the candidate (and a current partition model) at
  the agreement target on one draw (with a share of other classes mixed in, a
  guard for when the stream drifts), keeps the general model at its shipped
  threshold, and measures their hit rates on another draw, run as the agent
  runs them: an unsure partition model hands over to the general one;
* :func:`write_partition_bundle` writes the bundle the agents load.

The orchestration (window of escalations, triggers, library, push) is the
cloud's: :mod:`cloud_server.specializer`.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cachenet import calibration as calib_mod
from cachenet.bundle import Manifest, read_manifest, repack, write_bundle
from cachenet.export import INPUT_NAME, OUTPUT_NAME, export_checked, onnx_logits
from cachenet.gate import outcome, softmax
from cachenet.train import augment_batch, predict_logits

log = logging.getLogger(__name__)

N_CANARY = 16


@dataclass
class ReplayData:
    """The cloud's own data with the full model's answers as labels."""

    train_x: np.ndarray
    train_full: np.ndarray  # full-model labels
    hold_x: np.ndarray
    hold_full: np.ndarray
    num_classes: int
    augment: str = "none"
    train_probs: np.ndarray | None = None  # the full model's softmax on train_x

    @classmethod
    def from_splits(cls, splits: Any, full_model: nn.Module, *,
                    cache: Path | None = None) -> ReplayData:
        """The training split to learn from and the calibration split held out, with the
        full model's answers. Those are the slow part (the full model over every input);
        with ``cache`` (an ``.npz`` path) they are read from it, or written to it."""
        c, h, _ = splits.input_shape
        answers = _read_answers(cache, len(splits.train.x), len(splits.calib.x))
        if answers is None:
            answers = {"train_probs": softmax(predict_logits(full_model, splits.train.x)
                                              ).astype(np.float32),
                       "hold_full": predict_logits(full_model, splits.calib.x).argmax(1)}
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(cache.name + ".tmp.npz")
                np.savez(tmp, **answers)
                tmp.replace(cache)
        probs = answers["train_probs"]
        return cls(splits.train.x, probs.argmax(1), splits.calib.x, answers["hold_full"],
                   len(splits.classes), ("crop-flip" if c == 3 else "crop") if h >= 16
                   else "none", probs)


def _read_answers(cache: Path | None, n_train: int, n_hold: int) -> dict[str, np.ndarray] | None:
    """The full model's answers saved by :meth:`ReplayData.from_splits`, if they fit."""
    if cache is None or not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            answers = {"train_probs": z["train_probs"], "hold_full": z["hold_full"]}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring the replay answers in %s: %s", cache, exc)
        return None
    if len(answers["train_probs"]) != n_train or len(answers["hold_full"]) != n_hold:
        return None
    return answers


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


def partition_targets(full_labels: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Full-model labels mapped to a partition's outputs: its classes, then ``other``."""
    mapping = np.full(int(max(full_labels.max(initial=0), *classes)) + 1, len(classes))
    mapping[list(classes)] = np.arange(len(classes))
    return mapping[full_labels]


def partition_probs(probs: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Full-model probabilities mapped to a partition's outputs: its classes, then
    ``other`` holding the rest of the mass."""
    inside = probs[:, list(classes)]
    return np.concatenate([inside, 1.0 - inside.sum(1, keepdims=True)], 1).clip(0.0, 1.0)


def partition_model(base: nn.Module, classes: tuple[int, ...]) -> nn.Module:
    """A copy of ``base`` whose head answers ``classes`` and ``other``.

    The head starts from the base's rows for those classes, and ``other`` from
    the mean of the remaining rows, so training begins near the general model.
    """
    model = copy.deepcopy(base).float()
    fc: nn.Linear = model.fc  # TinyCNN and MLP both end in `fc`
    rest = [i for i in range(fc.out_features) if i not in classes]
    head = nn.Linear(fc.in_features, len(classes) + 1)
    with torch.no_grad():
        head.weight[:len(classes)] = fc.weight[list(classes)]
        head.bias[:len(classes)] = fc.bias[list(classes)]
        if rest:
            head.weight[-1] = fc.weight[rest].mean(0)
            head.bias[-1] = fc.bias[rest].mean(0)
    model.fc = head
    return model


@dataclass
class FinetuneConfig:
    # On CIFAR-10 ({automobile, frog, ship}, TinyCNN, 0.99 agreement with a 20% guard
    # of other classes), 2 epochs answered nothing, 6 answered 37%, 12 answered 41%.
    epochs: int = 6
    min_steps: int = 300  # small data sets get more epochs
    batch_size: int = 128
    lr: float = 3e-3
    other_ratio: float = 1.0  # "other" examples per in-partition example
    max_examples: int = 20000
    #: match the full model's probabilities (mapped to the partition) where the
    #: replay data has them, rather than its labels alone
    distill: bool = True
    seed: int = 0


def _training_set(classes: tuple[int, ...], replay: ReplayData,
                  hard: tuple[np.ndarray, np.ndarray] | None, cfg: FinetuneConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and their targets: a distribution over the partition's outputs per input."""
    inside = np.flatnonzero(np.isin(replay.train_full, classes))
    outside = np.flatnonzero(~np.isin(replay.train_full, classes))
    n_in = min(len(inside), int(cfg.max_examples / (1 + cfg.other_ratio)))
    n_out = min(len(outside), int(n_in * cfg.other_ratio))
    idx = np.concatenate([rng.choice(inside, n_in, replace=False),
                          rng.choice(outside, n_out, replace=False)])
    def one_hot(labels: np.ndarray) -> np.ndarray:
        return np.eye(len(classes) + 1, dtype=np.float32)[partition_targets(labels, classes)]

    x = replay.train_x[idx]
    if cfg.distill and replay.train_probs is not None:
        q = partition_probs(replay.train_probs[idx], classes)
    else:
        q = one_hot(replay.train_full[idx])
    if hard is not None and len(hard[0]):
        # The agent's own hard examples (what it could not answer itself), with the
        # full model's answers.
        x = np.concatenate([x, hard[0]])
        q = np.concatenate([q, one_hot(hard[1])])
    return x, q.astype(np.float32)


class Stopped(Exception):
    """Training was asked to stop (the server is shutting down)."""


def train_partition(base: nn.Module, classes: tuple[int, ...], replay: ReplayData, *,
                    hard: tuple[np.ndarray, np.ndarray] | None = None,
                    cfg: FinetuneConfig | None = None,
                    should_stop: Callable[[], bool] | None = None) -> nn.Module:
    """Fine-tune a partition model for ``classes`` (see the module docstring); raises
    :class:`Stopped` as soon as ``should_stop`` says so."""
    cfg = cfg or FinetuneConfig()
    rng = np.random.default_rng(cfg.seed)
    x, t = _training_set(classes, replay, hard, cfg, rng)
    model = partition_model(base, classes)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    per_epoch = max(1, -(-len(x) // cfg.batch_size))
    epochs = max(cfg.epochs, -(-cfg.min_steps // per_epoch))
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps, pct_start=0.2)
    xt, qt = torch.from_numpy(x), torch.from_numpy(t)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            if should_stop is not None and should_stop():
                raise Stopped(f"training for classes {classes} stopped")
            b = perm[i:i + cfg.batch_size]
            out = model(augment_batch(xt[b], replay.augment, gen))
            loss = -(qt[b] * F.log_softmax(out, 1)).sum(1).mean()  # cross-entropy to q
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


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
    candidate_agreement: float
    current_hit_rate: float
    current_agreement: float
    n_calib: int
    n_eval: int
    calibration: dict[str, Any]

    @property
    def better(self) -> bool:
        return self.candidate_hit_rate > self.current_hit_rate

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "better": self.better}


def calibrate_answerable(conf: np.ndarray, agree: np.ndarray, *, score_kind: str,
                         target: float, delta: float) -> calib_mod.Calibration:
    """Calibrate among the inputs a model may answer: not ``other`` (confidence 0)."""
    ok = conf > 0
    if not ok.any():
        return calib_mod.Calibration(score_kind, calib_mod.NEVER, "agreement", target, delta,
                                     len(conf), 0, 0.0, float("nan"), 1.0, False)
    return calib_mod.calibrate_agreement(conf[ok], agree[ok], score=score_kind, target=target,
                                         delta=delta)


@dataclass
class AgentAnswers:
    """How the agent answers the evaluation draw with a model active."""

    calibration: calib_mod.Calibration  # the active model's
    labels: np.ndarray  # what the edge answers, where it does
    local: np.ndarray  # answered at the edge: by the model, or handed over to the general one
    own: np.ndarray  # answered by the model itself


def answer_as_agent(model: Scored, general: Scored, general_threshold: float, *,
                    full_calib: np.ndarray, score_kind: str, target: float,
                    delta: float) -> AgentAnswers:
    """How the agent would answer the evaluation draw with ``model`` active.

    A partition model's threshold is calibrated on the calibration draw, and
    where it is unsure the general model answers if it is sure (the agent's
    cascade); the general model keeps the threshold it shipped with.
    """
    if model.partition is None:  # the general model runs at the threshold it shipped with
        cal = calib_mod.Calibration(score_kind, general_threshold, "shipped", target, delta,
                                    0, 0, float("nan"), float("nan"), float("nan"), True)
    else:
        lab_c, conf_c = outcome(model.calib, score_kind, model.partition)
        cal = calibrate_answerable(conf_c, lab_c == full_calib, score_kind=score_kind,
                                   target=target, delta=delta)
    lab, conf = outcome(model.eval, score_kind, model.partition)
    own = conf >= cal.threshold
    local = own
    if model.partition is not None:
        g_lab, g_conf = outcome(general.eval, score_kind)
        handover = ~own & (g_conf >= general_threshold)
        lab = np.where(handover, g_lab, lab)
        local = own | handover
    return AgentAnswers(cal, lab, local, own)


def system_outcome(model: Scored, general: Scored, general_threshold: float, *,
                   full_calib: np.ndarray, full_eval: np.ndarray, score_kind: str,
                   target: float, delta: float) -> tuple[calib_mod.Calibration, dict[str, float]]:
    """:func:`answer_as_agent`, summed up: the calibration and ``{hit_rate, agreement}``."""
    a = answer_as_agent(model, general, general_threshold, full_calib=full_calib,
                        score_kind=score_kind, target=target, delta=delta)
    n = int(a.local.sum())
    return a.calibration, {"hit_rate": n / len(a.local), "agreement":
                           float((a.labels == full_eval)[a.local].mean()) if n else float("nan")}


def compare(candidate: Scored, current: Scored, general: Scored, general_threshold: float, *,
            full_calib: np.ndarray, full_eval: np.ndarray, score_kind: str, target: float,
            delta: float) -> Comparison:
    """Candidate against the agent's current model, both calibrated to ``target`` on the
    calibration draw and run as the agent would on the evaluation draw."""
    kw = {"full_calib": full_calib, "full_eval": full_eval, "score_kind": score_kind,
          "target": target, "delta": delta}
    cal, cand = system_outcome(candidate, general, general_threshold, **kw)
    _, cur = system_outcome(current, general, general_threshold, **kw)
    classes = tuple(candidate.partition["classes"]) if candidate.partition else ()
    return Comparison(classes, cal.threshold, cand["hit_rate"], cand["agreement"],
                      cur["hit_rate"], cur["agreement"], len(full_calib), len(full_eval),
                      cal.to_dict())


def write_partition_bundle(out: Path, model: nn.Module, base: Manifest,
                           classes: tuple[int, ...], *, canary_x: np.ndarray,
                           exporter: str = "dynamo") -> Manifest:
    """Export ``model`` as a bundle answering ``classes`` + ``other``, not yet calibrated.

    Its threshold is above every score (it escalates everything) until
    :func:`calibrated_copy` writes a copy calibrated for one agent.
    """
    shape = tuple(int(d) for d in base.input["shape"][1:])
    with tempfile.TemporaryDirectory(prefix="cachenet-partition-") as tmp:
        work = Path(tmp)
        onnx_path = work / "model.onnx"
        export_checked(model, shape, onnx_path, canary_x, exporter=exporter)
        canary = np.ascontiguousarray(canary_x[:N_CANARY])
        np.savez(work / "canary.npz", x=canary, logits=onnx_logits(onnx_path, canary))
        fields = {
            "name": f"{base.name}-p{'-'.join(map(str, classes))}",
            "input": {**base.input, "name": INPUT_NAME},
            "output": {"name": OUTPUT_NAME, "shape": [-1, len(classes) + 1], "kind": "logits"},
            "classes": base.classes,
            "partition": {"classes": list(classes), "other_index": len(classes),
                          "names": [base.classes[c] for c in classes],
                          "base_version": base.version},
            "model": {**base.data["model"], "file": "model.onnx", "precision": "fp32",
                      "exporter": exporter},
            "variants": {}, "variant_gates": {},
            "gate": {"score": base.gate["score"], "threshold": calib_mod.NEVER},
            "canary": {"file": "canary.npz", "n": len(canary)},
            "dataset": base.data.get("dataset"),
        }
        return write_bundle(out, fields, {"model.onnx": onnx_path,
                                          "canary.npz": work / "canary.npz"})


def calibrated_copy(bundle: Path, out: Path, comparison: Comparison) -> Manifest:
    """A copy of a partition bundle with the threshold ``comparison`` calibrated."""
    m = read_manifest(bundle)
    gate = {"score": m.gate["score"], "threshold": comparison.threshold,
            "calibration": comparison.calibration, "specialization": comparison.to_dict()}
    return repack(bundle, out, fields={"gate": gate})
