"""Training loops: the full model on labels, the cache model by distillation.

One loop serves both. Its learning rate follows a one-cycle schedule (linear
warm-up, then cosine decay to zero) whose progress is the larger of the share
of epochs done and the share of the time budget spent, so a run with
``time_budget_s`` always ends on an annealed model, however busy the machine.
The loop checkpoints after every epoch and resumes from that checkpoint.

Distillation (:func:`kd_loss`) matches the cache model to the full model's own
temperature-softened outputs: what the edge has to reproduce is the cloud's
answer, not the label.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cachenet.toolchain.data import ArrayDataset
from cachenet.toolchain.seeds import training_seed

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup: float = 0.15
    time_budget_s: float | None = None
    augment: str = "none"  # "none" | "crop-flip" | "crop"
    temperature: float = 4.0  # distillation only
    seed: int = 0
    optimizer: str = "sgd"  # "sgd" (Nesterov) | "adam"
    channels_last: bool = False  # faster convolutions on CPUs for conv nets

    def to_dict(self) -> dict:
        return asdict(self)


def lr_factor(progress: float, warmup: float) -> float:
    """One-cycle factor in [0, 1] for ``progress`` in [0, 1]."""
    if progress < warmup:
        return progress / warmup
    rest = (progress - warmup) / max(1e-9, 1.0 - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, rest)))


def augment_batch(x: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crops (and horizontal flips for ``crop-flip``)."""
    if mode == "none":
        return x
    n, _, h, w = x.shape
    pad = 4 if min(h, w) >= 16 else 1
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    channels = torch.arange(x.shape[1])[None, :, None, None]
    out = padded[batch, channels, rows, cols]
    if mode == "crop-flip":
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(3)
    return out


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """Hinton's distillation loss: T^2 * KL(teacher_T || student_T)."""
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * (t * t)


@torch.no_grad()
@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The model's logits on ``x``, in batches, on whatever device the model is on."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    outs = [model(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu().numpy()
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean()) if len(y) else float("nan")


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def train_device() -> torch.device:
    """CUDA when present (logged), else the CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
        log.info("training on %s (bf16 autocast)", torch.cuda.get_device_name(device))
        return device
    log.info("training on the CPU (%d threads)", torch.get_num_threads())
    return torch.device("cpu")


def _teacher_views(x: torch.Tensor, views: torch.Tensor, idx: torch.Tensor,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of ``x`` flipped at random, and the cached teacher outputs of the view each
    came from (``views``: N x 2 x K, the image and its mirror; a 4-pixel crop keeps the
    teacher's answer to within what distillation needs)."""
    xb = augment_batch(x, "crop", gen)
    flip = torch.rand(len(xb), generator=gen) < 0.5
    xb[flip] = xb[flip].flip(3)
    return xb, views[idx, flip.long()]


def fit(model: nn.Module, data: ArrayDataset, cfg: TrainConfig, *,
        teacher: nn.Module | None = None, checkpoint: Path | None = None,
        progress: bool = True, on_epoch: Callable[[int, dict], None] | None = None,
        teacher_outputs: np.ndarray | None = None) -> dict:
    """Train ``model`` in place; returns a history dict.

    Without ``teacher`` it minimises cross-entropy on the labels; with one it
    minimises :func:`kd_loss` on the teacher's outputs for the same augmented
    batch and never reads the labels. ``teacher_outputs`` (N x 2 x K: the
    teacher's logits on each training image and its mirror, computed once)
    replaces ``teacher``: crops and flips only, and no teacher pass per batch.
    On CUDA (when present) it trains in bf16 autocast; the model comes back on
    the CPU either way.
    """
    from tqdm import tqdm

    device = train_device()
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    seed = training_seed(cfg.seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = _make_optimizer(model, cfg)
    steps_per_epoch = max(1, math.ceil(len(data) / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    state = {"epoch": 0, "step": 0, "elapsed": 0.0, "losses": []}
    if checkpoint is not None and checkpoint.exists():
        blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        state = blob["state"]
        gen.set_state(blob["gen"])
        log.info("resuming from %s at epoch %d", checkpoint, state["epoch"])
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    x_all = torch.from_numpy(data.x)
    y_all = torch.from_numpy(data.y)
    views = torch.from_numpy(teacher_outputs) if teacher_outputs is not None else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    if teacher is not None:
        teacher.eval()
    started = time.monotonic() - state["elapsed"]

    def progress_now() -> float:
        by_time = ((time.monotonic() - started) / cfg.time_budget_s
                   if cfg.time_budget_s else 0.0)
        return max(state["step"] / total_steps, by_time)

    done = progress_now() >= 1.0
    while not done and state["epoch"] < cfg.epochs:
        model.train()
        perm = torch.randperm(len(data), generator=gen)
        bar = tqdm(range(steps_per_epoch), disable=not progress, leave=False,
                   desc=f"epoch {state['epoch'] + 1}/{cfg.epochs}")
        running, seen = 0.0, 0
        for i in bar:
            p = progress_now()
            if p >= 1.0:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(p, cfg.warmup)
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            if views is not None:
                xb, t_out = _teacher_views(x_all[idx], views, idx, gen)
                t_out = t_out.to(device, non_blocking=True)
            else:
                xb = augment_batch(x_all[idx], cfg.augment, gen)
            xb = xb.to(device, non_blocking=True)
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast:
                out = model(xb).float()
                if views is None and teacher is None:
                    loss = F.cross_entropy(out, y_all[idx].to(device),
                                           label_smoothing=cfg.label_smoothing)
                else:
                    if views is None:
                        with torch.no_grad():
                            t_out = teacher(xb).float()  # type: ignore[misc]
                    loss = kd_loss(out, t_out, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{running / max(seen, 1):.3f}")
        state["epoch"] += 1
        state["elapsed"] = time.monotonic() - started
        state["losses"].append(running / max(seen, 1))
        log.info("epoch %d loss %.4f elapsed %.0fs", state["epoch"], state["losses"][-1],
                 state["elapsed"])
        if on_epoch is not None:
            on_epoch(state["epoch"], state)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_name(checkpoint.name + ".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "state": state, "gen": gen.get_state()}, tmp)
            tmp.replace(checkpoint)
    model.to(memory_format=torch.contiguous_format).eval().cpu()
    if teacher is not None:
        teacher.cpu()
    return {"device": device.type, "epochs": state["epoch"], "steps": state["step"],
            "total_steps": total_steps, "elapsed_s": round(time.monotonic() - started, 2),
            "losses": state["losses"], "seed": seed}
