"""How a partition model is made: the trainers of the specialiser.

A *partition model* answers a group of classes ``S`` and has one extra output,
``other``, for everything else, which always escalates (its confidence reads as
0, :mod:`cachenet.core.cascade`). A trainer makes one for ``S``; the registry
:data:`TRAINERS` names them (``cachenet-cloud --partition-trainer``):

* ``finetune`` (the default, :func:`train_partition`): the general cache model
  fine-tuned on the cloud's replay data and the agent's hard (escalated)
  examples, both labelled by the full model, never by people; on replay data it
  matches the full model's probabilities, folded into the partition's outputs
  (:func:`partition_probs`);
* ``head`` (:func:`train_head`): a new last layer on the general cache model's
  frozen features (:class:`HeadPartition`): the replay data's features are
  computed once, so a head trains in seconds on a CPU, and it ships as a head
  bundle of kilobytes that runs on the model the agent already has
  (:func:`cachenet.fleet.specialize.write_head_bundle`);
* ``oracle`` (:class:`FoldedPartition`): the full model itself, its logits folded
  into the partition's outputs (``other`` = log-sum-exp of the rest). Whenever it
  answers a class of ``S`` the full model answers the same, by construction, so it
  is the most a partition model for ``S`` can answer at any agreement target: an
  upper bound for benchmarks, and a model whose outcome does not depend on
  training, for tests. It is as large as the full model.

A trainer is ``(classes, hard examples, should_stop) -> nn.Module``, built by
:func:`make_trainer` from a :class:`TrainerContext`; adding one is one entry in
:data:`TRAINERS`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cachenet.exceptions import ConfigError, TrainingStopped
from cachenet.fleet.replay import ReplayData
from cachenet.toolchain.export import WithFeatures
from cachenet.toolchain.seeds import training_seed
from cachenet.toolchain.train import augment_batch

#: The agent's hard examples: inputs and the full model's labels for them.
Hard = tuple[np.ndarray, np.ndarray]
#: ``(classes, hard examples or None, should_stop) -> partition model``.
PartitionTrainer = Callable[[tuple[int, ...], Hard | None, Callable[[], bool]], nn.Module]


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


def _one_hot(labels: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    return np.eye(len(classes) + 1, dtype=np.float32)[partition_targets(labels, classes)]


def _training_rows(classes: tuple[int, ...], replay: ReplayData, cfg: FinetuneConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Replay rows to learn from and their targets: a distribution over the partition's
    outputs per row (the full model's, folded, or its label)."""
    inside = np.flatnonzero(np.isin(replay.train_full, classes))
    outside = np.flatnonzero(~np.isin(replay.train_full, classes))
    n_in = min(len(inside), int(cfg.max_examples / (1 + cfg.other_ratio)))
    n_out = min(len(outside), int(n_in * cfg.other_ratio))
    idx = np.concatenate([rng.choice(inside, n_in, replace=False),
                          rng.choice(outside, n_out, replace=False)])
    if cfg.distill and replay.train_probs is not None:
        q = partition_probs(replay.train_probs[idx], classes)
    else:
        q = _one_hot(replay.train_full[idx], classes)
    return idx, q.astype(np.float32)


def _training_set(classes: tuple[int, ...], replay: ReplayData,
                  hard: tuple[np.ndarray, np.ndarray] | None, cfg: FinetuneConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and their targets: a distribution over the partition's outputs per input."""
    idx, q = _training_rows(classes, replay, cfg, rng)
    x = replay.train_x[idx]
    if hard is not None and len(hard[0]):
        # The agent's own hard examples (what it could not answer itself), with the
        # full model's answers.
        x = np.concatenate([x, hard[0]])
        q = np.concatenate([q, _one_hot(hard[1], classes)])
    return x, q.astype(np.float32)


def train_partition(base: nn.Module, classes: tuple[int, ...], replay: ReplayData, *,
                    hard: tuple[np.ndarray, np.ndarray] | None = None,
                    cfg: FinetuneConfig | None = None,
                    should_stop: Callable[[], bool] | None = None) -> nn.Module:
    """Fine-tune a partition model for ``classes`` (see the module docstring); raises
    :class:`~cachenet.exceptions.TrainingStopped` as soon as ``should_stop`` says so."""
    cfg = cfg or FinetuneConfig()
    seed = training_seed(cfg.seed)
    rng = np.random.default_rng(seed)
    x, t = _training_set(classes, replay, hard, cfg, rng)
    model = partition_model(base, classes)
    gen = torch.Generator().manual_seed(seed)
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
                raise TrainingStopped(f"training for classes {classes} stopped")
            b = perm[i:i + cfg.batch_size]
            out = model(augment_batch(xt[b], replay.augment, gen))
            loss = -(qt[b] * F.log_softmax(out, 1)).sum(1).mean()  # cross-entropy to q
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


class HeadPartition(nn.Module):
    """A partition model that is a new last layer ``fc`` on the general cache model's
    frozen features (:class:`~cachenet.toolchain.export.WithFeatures`)."""

    def __init__(self, base: nn.Module, fc: nn.Linear) -> None:
        super().__init__()
        self.base, self.fc = WithFeatures(base), fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.base(x)[1])


@dataclass
class HeadConfig:
    steps: int = 400
    batch_size: int = 512
    lr: float = 1e-2
    weight_decay: float = 1e-4


@torch.no_grad()
def base_features(base: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The general cache model's features of ``x`` (what a head reads)."""
    body = WithFeatures(base).eval()
    return np.concatenate([body(torch.from_numpy(x[i:i + batch_size]))[1].numpy()
                           for i in range(0, len(x), batch_size)] or
                          [np.zeros((0, body.fc.in_features), np.float32)])


def train_head(base: nn.Module, features: np.ndarray, classes: tuple[int, ...],
               replay: ReplayData, *, hard: Hard | None = None,
               cfg: HeadConfig | None = None, rows: FinetuneConfig | None = None,
               should_stop: Callable[[], bool] | None = None) -> HeadPartition:
    """A head for ``classes`` on ``base``'s frozen features: ``features`` are those of
    ``replay.train_x`` (computed once, :func:`base_features`); ``rows`` picks the
    replay rows as :func:`train_partition` does. The head starts as
    :func:`partition_model`'s and follows the full model's folded probabilities."""
    cfg, rows = cfg or HeadConfig(), rows or FinetuneConfig()
    seed = training_seed(rows.seed)
    idx, q = _training_rows(classes, replay, rows, np.random.default_rng(seed))
    f = features[idx]
    if hard is not None and len(hard[0]):
        f = np.concatenate([f, base_features(base, hard[0])])
        q = np.concatenate([q, _one_hot(hard[1], classes)])
    fc: nn.Linear = partition_model(base, classes).fc
    ft, qt = torch.from_numpy(np.ascontiguousarray(f, np.float32)), torch.from_numpy(q)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(fc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    for _ in range(cfg.steps):
        if should_stop is not None and should_stop():
            raise TrainingStopped(f"training a head for classes {classes} stopped")
        b = torch.randint(0, len(ft), (min(cfg.batch_size, len(ft)),), generator=gen)
        loss = -(qt[b] * F.log_softmax(fc(ft[b]), 1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return HeadPartition(base, fc).eval()


class FoldedPartition(nn.Module):
    """The full model with its logits folded into a partition's outputs: the classes'
    own logits, then ``other`` = log-sum-exp of the other classes' logits."""

    def __init__(self, full: nn.Module, classes: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.full = full
        rest = [c for c in range(num_classes) if c not in classes]
        self.register_buffer("inside", torch.tensor(list(classes), dtype=torch.long))
        self.register_buffer("rest", torch.tensor(rest, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.full(x)
        other = torch.logsumexp(z.index_select(1, self.rest), dim=1, keepdim=True)
        return torch.cat([z.index_select(1, self.inside), other], dim=1)


@dataclass
class TrainerContext:
    """What the trainers may use: the general cache model, the full model (on the CPU)
    and the replay data."""

    base: nn.Module
    replay: ReplayData
    full: nn.Module | None = None
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def _finetune(ctx: TrainerContext) -> PartitionTrainer:
    def train(classes: tuple[int, ...], hard: Hard | None,
              should_stop: Callable[[], bool]) -> nn.Module:
        return train_partition(ctx.base, classes, ctx.replay, hard=hard, cfg=ctx.finetune,
                               should_stop=should_stop)
    return train


def _head(ctx: TrainerContext) -> PartitionTrainer:
    base = copy.deepcopy(ctx.base).float().eval()
    features = base_features(base, ctx.replay.train_x)  # once, before the first check

    def train(classes: tuple[int, ...], hard: Hard | None,
              should_stop: Callable[[], bool]) -> nn.Module:
        return train_head(base, features, classes, ctx.replay, hard=hard,
                          rows=ctx.finetune, should_stop=should_stop)
    return train


def _oracle(ctx: TrainerContext) -> PartitionTrainer:
    if ctx.full is None:
        raise ConfigError("the 'oracle' partition trainer needs the full model")
    full = copy.deepcopy(ctx.full).cpu().eval()

    def fold(classes: tuple[int, ...], hard: Hard | None,
             should_stop: Callable[[], bool]) -> nn.Module:
        return FoldedPartition(full, classes, ctx.replay.num_classes).eval()
    return fold


#: The registered partition trainers, by name.
TRAINERS: dict[str, Callable[[TrainerContext], PartitionTrainer]] = {
    "finetune": _finetune,
    "head": _head,
    "oracle": _oracle,
}


def make_trainer(name: str, ctx: TrainerContext) -> PartitionTrainer:
    if name not in TRAINERS:
        raise ConfigError(f"unknown partition trainer '{name}'; known: {', '.join(TRAINERS)}")
    return TRAINERS[name](ctx)
