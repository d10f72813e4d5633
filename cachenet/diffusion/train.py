"""Training a denoiser: epsilon prediction on images scaled to [-1, 1].

The loop is DDPM's (uniform timesteps, MSE on the noise) with what small budgets
need: AdamW with warm-up then cosine decay of the learning rate (the shared
one-cycle factor of :mod:`cachenet.toolchain.train`, whose progress is the larger
of the share of steps done and the share of the time budget spent), an
exponential moving average of the weights (what is sampled from), random
horizontal flips, and the class label dropped to "no class" for a share of the
batch so the model also learns unconditional samples (classifier-free
guidance). On CUDA it trains in bf16 autocast; it checkpoints every
``checkpoint_every`` steps and at the end, and resumes from its checkpoint.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cachenet.diffusion.nets import DiffusionModel
from cachenet.toolchain.seeds import training_seed
from cachenet.toolchain.train import lr_factor, train_device

log = logging.getLogger(__name__)


@dataclass
class DiffusionTrainConfig:
    steps: int = 100_000
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: float = 0.02
    ema: float = 0.9995
    label_dropout: float = 0.1
    flip: bool = True
    grad_clip: float = 1.0
    time_budget_s: float | None = None
    checkpoint_every: int = 2000
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def _batch(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, cfg: DiffusionTrainConfig,
           classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    xb = x[idx].float() * (2.0 / 255.0) - 1.0 if x.dtype == torch.uint8 else x[idx] * 2.0 - 1.0
    if cfg.flip:
        flip = torch.rand(len(idx), generator=gen) < 0.5
        xb[flip] = xb[flip].flip(3)
    yb = y[idx].clone()
    yb[torch.rand(len(idx), generator=gen) < cfg.label_dropout] = classes
    return xb, yb


def train_denoiser(model: DiffusionModel, images: np.ndarray, labels: np.ndarray,
                   cfg: DiffusionTrainConfig, *, checkpoint: Path | None = None,
                   progress: bool = True) -> dict:
    """Train ``model.net`` on ``images`` (N x C x H x W, uint8 or float in [0, 1]);
    the model comes back holding the EMA weights, on the CPU. Returns a history."""
    from tqdm import tqdm

    device = train_device()
    seed = training_seed(cfg.seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # batches, flips, dropped labels
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)  # timesteps, noise
    net = model.net.to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"step": 0, "elapsed": 0.0, "losses": [], "running": 0.0}
    if checkpoint is not None and checkpoint.exists():
        blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
        net.load_state_dict(blob["model"])
        ema.load_state_dict(blob["ema"])
        opt.load_state_dict(blob["optimizer"])
        state = blob["state"]
        gen.set_state(blob["gen"])
        noise_gen.set_state(blob["noise_gen"])
        torch.set_rng_state(blob["torch_rng"])  # dropout's
        if device.type == "cuda" and blob.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(blob["cuda_rng"])
        log.info("resuming from %s at step %d", checkpoint, state["step"])
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels.astype(np.int64))
    acp = model.schedule.alphas_cumprod().float().to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    started = time.monotonic() - state["elapsed"]

    def progress_now() -> float:
        by_time = (time.monotonic() - started) / cfg.time_budget_s if cfg.time_budget_s else 0.0
        return max(state["step"] / cfg.steps, by_time)

    def save() -> None:
        if checkpoint is None:
            return
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_name(checkpoint.name + ".tmp")
        torch.save({"model": net.state_dict(), "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(), "state": state, "gen": gen.get_state(),
                    "noise_gen": noise_gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None},
                   tmp)
        tmp.replace(checkpoint)

    bar = tqdm(total=cfg.steps, initial=state["step"], disable=not progress, desc="denoiser")
    while progress_now() < 1.0:
        p = progress_now()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(p, cfg.warmup)
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
        xb, yb = _batch(x, y, idx, cfg, model.num_classes, gen)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        # Timesteps and noise from the run's own generator, on the device: a resumed run
        # draws what the uninterrupted one would have.
        t = torch.randint(0, model.schedule.train_steps, (len(xb),), generator=noise_gen,
                          device=device)
        eps = torch.randn(xb.shape, generator=noise_gen, device=device)
        a = acp[t].view(-1, 1, 1, 1)
        with autocast:
            loss = F.mse_loss(net(a.sqrt() * xb + (1 - a).sqrt() * eps, t, yb).float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        state["step"] += 1
        _ema_update(ema, net, min(cfg.ema, (1 + state["step"]) / (10 + state["step"])))
        value = float(loss.detach())
        state["running"] = value if state["step"] == 1 else 0.98 * state["running"] + 0.02 * value
        bar.update(1)
        if state["step"] % 50 == 0:
            bar.set_postfix(loss=f"{state['running']:.4f}")
            state["losses"].append(round(state["running"], 5))
        state["elapsed"] = time.monotonic() - started
        if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
            save()
    bar.close()
    save()
    model.net = ema.cpu().eval()
    elapsed = time.monotonic() - started
    running = state["running"]
    log.info("trained %d steps in %.0fs on %s, loss %.4f", state["step"], elapsed, device.type,
             running)
    return {"device": device.type, "steps": state["step"], "elapsed_s": round(elapsed, 1),
            "loss": round(running, 5), "losses": state["losses"],
            "images_seen": state["step"] * cfg.batch_size,
            "epochs": round(state["step"] * cfg.batch_size / max(1, len(x)), 2),
            "time_budget_s": cfg.time_budget_s, "config": cfg.to_dict(),
            "lr_schedule": "warm-up then cosine (one-cycle, by the larger of steps and time)",
            "note": "" if math.isfinite(running) else "loss diverged"}
