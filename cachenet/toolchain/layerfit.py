"""Fit layer caches to a model: candidate rules, selection under a compute budget,
calibration of the whole cascade, and the bundle section that carries them.

For one model cut at its sites (:mod:`cachenet.toolchain.sites`):

1. **Candidates**: at every site, one rule per kind asked for: a ``learned``
   head trained by self-distillation on the full model's logits, a ``knn``
   table and an ``akey`` table filled with the full model's answers; all on the
   training split (at most ``fit_limit`` inputs).
2. **Selection** on the first half of the calibration split, with measured
   costs (:mod:`cachenet.toolchain.layerselect`): the cascade grows greedily by
   the candidate that most lowers the time per request, each kept only when its
   lookups cost at most ``max_lookup_share`` of the time its hits save, all of
   them at most ``budget`` of the model's: which sites pay for their lookup.
3. **Calibration** of the kept rules together, in cascade order, on the second
   half (:func:`cachenet.layercache.calibrate_cascade`): the guarantee covers the
   cascade as a whole.

Tables learn online, so what they are worth depends on the workload: the
calibration split is replayed as the workload the caches are meant for (``iid``
as it is, or ``video``: its images as a camera's frames, :mod:`cachenet.toolchain.data.video`),
in order, each table looked up before it learns the full model's answer, as it
will be when serving. The guarantee holds for streams like that workload.

The reference is always the full model: in the cloud the model itself, on the
edge the full model's answers the cache model's caches must agree with.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cachenet.core.calibration import NEVER
from cachenet.core.gate import softmax
from cachenet.exceptions import ConfigError
from cachenet.layercache import (
    KINDS,
    HeadCache,
    HeadConfig,
    KeyCache,
    KeyConfig,
    KnnCache,
    KnnConfig,
    LayerCascade,
    Refresh,
    Rule,
    calibrate_cascade,
)
from cachenet.toolchain.layerselect import Costs, measure_costs, select
from cachenet.toolchain.seeds import training_seed
from cachenet.toolchain.sites import Staged

log = logging.getLogger(__name__)

#: Within a site, rules are consulted cheapest first.
KIND_ORDER = ("akey", "knn", "learned")
WORKLOADS = ("iid", "video")


@dataclass
class LayerCacheConfig:
    kinds: tuple[str, ...] = KIND_ORDER
    target: float = 0.99
    delta: float = 0.05
    knn: KnnConfig = field(default_factory=lambda: KnnConfig(k=1, capacity=8192))
    akey_dim: int = 8
    akey_step: float = 1.0
    head_hidden: int = 256
    head_epochs: int = 30
    max_lookup_share: float = 0.10
    budget: float = 0.05
    refresh_rate: float = 0.02
    fit_limit: int = 20000
    grid: int = 4  # site features: activations average-pooled to grid x grid
    #: the workload calibration replays the calibration split as: iid or video
    workload: str = "iid"
    #: a video replay has this many frames per calibration image
    video_frames: float = 4.0
    #: tables learn only answers the full model gave with at least this confidence
    fill_confidence: float = 0.9
    #: on the edge: what an escalation costs, weighed against lookups (a 4g round trip)
    escalation_s: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ConfigError(f"unknown layer-cache kinds {sorted(unknown)}; known: "
                              f"{sorted(KINDS)}")
        if self.workload not in WORKLOADS:
            raise ConfigError(f"workload must be one of {WORKLOADS}, not {self.workload!r}")


@dataclass
class Candidate:
    site: int
    kind: str
    cache: Any
    hit_rate: float = 0.0  # alone, at the target, on the selection half
    lookup_s: float = 0.0  # measured, per input
    kept: bool = False

    def describe(self, names: list[str]) -> dict[str, Any]:
        return {"site": names[self.site], "kind": self.kind, "hit_rate_alone": self.hit_rate,
                "lookup_macs": self.cache.lookup_macs, "lookup_us": 1e6 * self.lookup_s,
                "kept": self.kept}


@dataclass
class FittedCascade:
    site_names: list[str]
    site_macs: list[int]
    full_macs: int
    features: list[int]
    grid: int
    rules: list[Candidate]
    thresholds: list[float]
    calibration: dict[str, Any]
    candidates: list[dict[str, Any]]
    costs: dict[str, Any] = field(default_factory=dict)  # measured when fitted


def train_head(feats: np.ndarray, teacher: np.ndarray, *, hidden: int, epochs: int,
               seed: int, score: str = "max_softmax") -> HeadCache:
    """A head on ``feats`` distilled from the ``teacher`` logits (no labels); the
    standardisation of the features is folded into its first layer."""
    seed = training_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    x = torch.from_numpy(((feats - mean) / std).astype(np.float32))
    t = torch.from_numpy(teacher.astype(np.float32))
    d, k = x.shape[1], t.shape[1]
    net = (nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, k)) if hidden
           else nn.Sequential(nn.Linear(d, k)))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 255) // 256)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(256):
            loss = nn.functional.kl_div(torch.log_softmax(net(x[idx]), 1),
                                        torch.softmax(t[idx], 1), reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    linears = [m for m in net if isinstance(m, nn.Linear)]
    w0 = linears[0].weight.detach().numpy().T / std[:, None]
    b0 = linears[0].bias.detach().numpy() - (mean / std) @ linears[0].weight.detach().numpy().T
    weights = [(w0, b0)] + [(m.weight.detach().numpy().T, m.bias.detach().numpy())
                            for m in linears[1:]]
    return HeadCache(HeadConfig(hidden=hidden, score=score), weights)


def make_candidates(cfg: LayerCacheConfig, feats: list[np.ndarray], teacher: np.ndarray
                    ) -> list[Candidate]:
    """Every kind asked for at every site, fitted to the training features; tables hold
    the full model's sure answers."""
    labels = teacher.argmax(1)
    sure = softmax(teacher).max(1) >= cfg.fill_confidence
    out = []
    rng = np.random.default_rng(training_seed(cfg.seed))
    for site, f in enumerate(feats):
        for kind in (k for k in KIND_ORDER if k in cfg.kinds):
            if kind == "learned":
                cache: Any = train_head(f, teacher, hidden=cfg.head_hidden,
                                        epochs=cfg.head_epochs, seed=cfg.seed + site)
            elif kind == "knn":
                cache = KnnCache.fit(cfg.knn, f)
                keep = rng.permutation(np.flatnonzero(sure))[:cfg.knn.capacity]
                cache.fill(f[keep], labels[keep])
            else:
                cache = KeyCache.fit(KeyConfig(teacher.shape[1], cfg.akey_dim, cfg.akey_step,
                                               seed=training_seed(cfg.seed),
                                               cells=cfg.grid ** 2), f)
                cache.fill(f[sure], labels[sure])
            out.append(Candidate(site, kind, cache))
    return out


def scores(cands: list[Candidate], feats: list[np.ndarray], ref: np.ndarray,
           learn: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(confidences, labels), rules x inputs, as serving would see them: tables are looked
    up one input at a time and then learn the full model's answer (``ref``) where
    ``learn`` says it was sure, in order, on copies (the fitted tables are left as they
    are)."""
    learn = np.ones(len(ref), bool) if learn is None else learn
    conf = np.zeros((len(cands), len(ref)))
    labels = np.zeros((len(cands), len(ref)), np.int64)
    for j, c in enumerate(cands):
        f = feats[c.site]
        if c.kind == "learned":
            found = c.cache.lookup(f)
            conf[j], labels[j] = found.conf, found.labels
            continue
        table = copy.deepcopy(c.cache)
        for i in range(len(ref)):
            found = table.lookup(f[i:i + 1])
            conf[j, i], labels[j, i] = found.conf[0], found.labels[0]
            if learn[i]:
                table.fill(f[i:i + 1], ref[i:i + 1])
    return conf, labels


def workload(calib_x: np.ndarray, cfg: LayerCacheConfig) -> np.ndarray:
    """The calibration split replayed as the workload the caches are calibrated for:
    as it is (``iid``), or as a camera's frames (``video``)."""
    if cfg.workload == "iid":
        return calib_x
    from cachenet.toolchain.data.video import render, video_stream

    n = int(cfg.video_frames * len(calib_x))
    return render(calib_x, video_stream(len(calib_x), n, seed=cfg.seed + 1))


@dataclass
class Prepared:
    """Candidates fitted to one model, and their scores on the calibration workload."""

    staged: Staged
    site_macs: list[int]
    full_macs: int
    features: list[int]
    cands: list[Candidate]
    conf: np.ndarray  # rules x calibration inputs
    labels: np.ndarray
    ref: np.ndarray  # the full model's labels on them
    costs: Costs  # measured: stages and lookups, per input
    escalates: np.ndarray | None = None  # on the edge: inputs its gate would escalate


def fit_candidates(staged_model: Staged, input_shape: tuple[int, ...], fit_x: np.ndarray,
                   teacher: Callable[[np.ndarray], np.ndarray] | None, cfg: LayerCacheConfig
                   ) -> tuple[list[Candidate], list[int], int]:
    """Every candidate fitted on (at most ``fit_limit`` of) ``fit_x``, to the full model's
    logits (``teacher``; None: the staged model is the full model); and the model's MACs
    to each site and in all."""
    from cachenet.toolchain.sites import all_features

    site_macs, full_macs = staged_model.cumulative_macs(input_shape)
    rng = np.random.default_rng(training_seed(cfg.seed))
    x = fit_x[np.sort(rng.permutation(len(fit_x))[:cfg.fit_limit])]
    fit_feats, own = all_features(staged_model, x)
    knn = replace(cfg.knn, capacity=knn_capacity(cfg, full_macs))
    cands = make_candidates(replace(cfg, knn=knn), fit_feats,
                            own if teacher is None else teacher(x))
    return cands, site_macs, full_macs


def score_workload(staged_model: Staged, cands: list[Candidate], site_macs: list[int],
                   full_macs: int, calib_x: np.ndarray,
                   reference: Callable[[np.ndarray], np.ndarray] | None,
                   cfg: LayerCacheConfig,
                   gate: Callable[[np.ndarray], np.ndarray] | None = None) -> Prepared:
    """Score ``cands`` on the calibration workload; ``reference`` gives the full model's
    logits (None: the staged model is the full model); ``gate`` (on the edge) says which
    of the staged model's logits its gate escalates."""
    from cachenet.toolchain.sites import TorchRunner, all_features

    x = workload(calib_x, cfg)
    cal_feats, own = all_features(staged_model, x)
    ref_logits = own if reference is None else reference(x)
    ref = ref_logits.argmax(1)
    conf, labels = scores(cands, cal_feats, ref,
                          softmax(ref_logits).max(1) >= cfg.fill_confidence)
    costs = measure_costs(TorchRunner(staged_model), x, cands, cal_feats)
    return Prepared(staged_model, site_macs, full_macs, [f.shape[1] for f in cal_feats], cands,
                    conf, labels, ref, costs, None if gate is None else gate(own))


def prepare(staged_model: Staged, input_shape: tuple[int, ...], fit_x: np.ndarray,
            calib_x: np.ndarray, reference: Callable[[np.ndarray], np.ndarray] | None,
            cfg: LayerCacheConfig,
            gate: Callable[[np.ndarray], np.ndarray] | None = None) -> Prepared:
    """:func:`fit_candidates`, then :func:`score_workload`; ``reference``: the full model's
    logits (None: the staged model is the full model)."""
    cands, site_macs, full_macs = fit_candidates(staged_model, input_shape, fit_x,
                                                 reference, cfg)
    return score_workload(staged_model, cands, site_macs, full_macs, calib_x, reference, cfg,
                          gate)


def knn_capacity(cfg: LayerCacheConfig, full_macs: int) -> int:
    """A kNN table whose search costs at most 1% of the model: a power of two in
    [256, cfg.knn.capacity]."""
    cap = 1 << max(0, int(np.log2(max(1.0, 0.01 * full_macs / cfg.knn.dim))))
    return int(min(cfg.knn.capacity, max(256, cap)))


def choose(prep: Prepared, cfg: LayerCacheConfig) -> FittedCascade:
    """Selection on the first half of the calibration workload, calibration of the kept
    rules together on the second (halves in order: a stream's locality is kept)."""
    n = prep.conf.shape[1]
    sel, cal = np.arange(n // 2), np.arange(n // 2, n)
    kept = select(prep.cands, prep.conf[:, sel], prep.labels[:, sel], prep.ref[sel],
                  prep.costs, kinds=cfg.kinds, target=cfg.target,
                  max_lookup_share=cfg.max_lookup_share, budget=cfg.budget,
                  kind_order=KIND_ORDER,
                  escalates=None if prep.escalates is None else prep.escalates[sel],
                  escalation_s=cfg.escalation_s)
    names = prep.staged.site_names
    if not kept:
        log.warning("no layer cache pays for its lookup on these data: none kept")
        calib: dict[str, Any] = {"feasible": False, "n": len(cal), "hit_rate": 0.0}
        thresholds: list[float] = []
    else:
        result = calibrate_cascade(list(prep.conf[kept][:, cal]),
                                   list(prep.labels[kept][:, cal]), prep.ref[cal],
                                   target=cfg.target, delta=cfg.delta)
        calib, thresholds = result.to_dict(), result.thresholds
        # A rule calibrated never to answer would only cost its lookups: it goes (which
        # changes no answer, so the guarantee stands).
        answering = [i for i, t in enumerate(thresholds) if t < NEVER]
        for i, j in enumerate(kept):
            prep.cands[j].kept = i in answering
        kept = [kept[i] for i in answering]
        thresholds = [thresholds[i] for i in answering]
        for key in ("hits_per_rule", "disagreements_per_rule"):
            calib[key] = [calib[key][i] for i in answering]
        log.info("layer caches: %s; calibrated hit rate %.3f at agreement %s (bound %.4f)",
                 [f"{names[prep.cands[j].site]}:{prep.cands[j].kind}" for j in kept],
                 result.hit_rate, result.agreement, result.disagreement_ucb)
    calib["workload"] = cfg.workload
    return FittedCascade(names, prep.site_macs, prep.full_macs, prep.features,
                         prep.staged.grid, [prep.cands[j] for j in kept], thresholds, calib,
                         [c.describe(names) for c in prep.cands],
                         {"stage_us": [1e6 * s for s in prep.costs.stage_s],
                          "full_us": 1e6 * prep.costs.full_s})


def fit_cascade(staged_model: Staged, input_shape: tuple[int, ...], fit_x: np.ndarray,
                calib_x: np.ndarray, reference: Callable[[np.ndarray], np.ndarray] | None,
                cfg: LayerCacheConfig,
                gate: Callable[[np.ndarray], np.ndarray] | None = None) -> FittedCascade:
    """:func:`prepare`, then :func:`choose`."""
    return choose(prepare(staged_model, input_shape, fit_x, calib_x, reference, cfg, gate),
                  cfg)


def write_section(fitted: FittedCascade, work: Path, prefix: str, cfg: LayerCacheConfig,
                  segments: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """The manifest's ``layer_cache`` section and the files it names (bundle path ->
    file in ``work``)."""
    files: dict[str, Path] = {}
    rules = []
    for c, t in zip(fitted.rules, fitted.thresholds, strict=True):
        name = f"layers/{prefix}-{fitted.site_names[c.site]}-{c.kind}.npz"
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **c.cache.arrays())
        files[name] = path
        rules.append({"site": fitted.site_names[c.site], "kind": c.kind, "threshold": t,
                      "config": asdict(c.cache.config), "file": name,
                      "lookup_macs": c.cache.lookup_macs})
    sites = [{"name": n, "macs": m, "features": f, "grid": fitted.grid,
              "segment": segments[i] if segments else None}
             for i, (n, m, f) in enumerate(zip(fitted.site_names, fitted.site_macs,
                                               fitted.features, strict=True))]
    section = {"sites": sites, "final": {"segment": segments[-1] if segments else None},
               "full_macs": fitted.full_macs, "rules": rules,
               "refresh": {"rate": cfg.refresh_rate}, "target": cfg.target,
               "fill_confidence": cfg.fill_confidence,
               "delta": cfg.delta, "calibration": fitted.calibration,
               "candidates": fitted.candidates, "costs": fitted.costs}
    return section, files


def to_cascade(fitted: FittedCascade, num_classes: int, *, refresh_rate: float = 0.0,
               target: float = 0.99, delta: float = 0.05,
               fill_confidence: float = 0.9) -> LayerCascade:
    """The cascade ``fitted`` describes, with copies of its tables (what a server loading
    its bundle section would hold)."""
    rules = [Rule(c.site, f"{fitted.site_names[c.site]}:{c.kind}", copy.deepcopy(c.cache), t,
                  Refresh(refresh_rate, target, alpha=delta) if refresh_rate > 0 else None)
             for c, t in zip(fitted.rules, fitted.thresholds, strict=True)]
    return LayerCascade(fitted.site_names, fitted.site_macs, fitted.full_macs, rules,
                        num_classes, fill_confidence)
