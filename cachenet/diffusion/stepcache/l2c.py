"""Learning-to-Cache (L2C, Ma et al., 2024): a learned, timestep-variant and
input-invariant router that decides, per step, which layers of a diffusion
transformer to take from the step before.

The router is one number per (step, block, branch): ``beta = sigmoid(logit)``.
Trained (:func:`train_router`) with the model frozen, a cache step ``i`` mixes
each branch's fresh output with the one computed at step ``i - 1``,
``beta * fresh + (1 - beta) * kept``, and the loss is the paper's: the error
between the full and the routed sampler output at the next step, plus
``lam`` times the mean of the betas (an L1 cost on computing). Cache steps are
the odd steps (the paper alternates full and cache steps; ``period = 2`` is the
only one trained), so the previous step is always a full one, during training
and inference alike.

For inference the router is thresholded into a static schedule
(:meth:`L2C.reuse`): at cache step ``i`` the branches with ``beta < threshold``
are reused. The schedule is a pure function of the step; the router is stored
in the model's checkpoint (``l2c``) with the sampler and step count it was
trained for, and only those are accepted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cachenet.diffusion.nets import DiffusionModel
from cachenet.diffusion.samplers import ddim, ddim_step
from cachenet.diffusion.stepcache.base import StepConfig, register
from cachenet.diffusion.stepcache.fora import BranchCache
from cachenet.exceptions import ConfigError
from cachenet.toolchain.seeds import training_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class L2CConfig(StepConfig):
    threshold: float = 0.5


@dataclass(frozen=True)
class RouterConfig:
    steps: int = 50
    period: int = 2
    lam: float = 1.0  # weight of the L1 cost on the betas, against the normalised error
    iters: int = 1500
    batch: int = 64
    trajectories: int = 256
    lr: float = 0.03
    init: float = 0.0  # initial logit (beta = 0.5): no branch favoured
    seed: int = 0


def check_router_config(cfg: RouterConfig) -> None:
    """ConfigError naming a router setting that cannot be trained as the paper does."""
    if cfg.period != 2:
        raise ConfigError(f"l2c: period must be 2 (full and cache steps alternate, so a cache "
                          f"step's previous step is always a full one), got {cfg.period}")
    if cfg.steps < 2:
        raise ConfigError(f"l2c: steps must be at least 2, got {cfg.steps}")
    for name in ("iters", "batch", "trajectories"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"l2c: {name} must be at least 1, got {getattr(cfg, name)}")
    if not (cfg.lam >= 0 and cfg.lr > 0):
        raise ConfigError("l2c: lam must be >= 0 and lr > 0")


def check_router(router: dict, depth: int) -> None:
    """ConfigError unless ``router`` (as a checkpoint stores it) fits a DiT of ``depth``
    blocks: ``steps``, ``period`` and a steps x depth x 2 table of betas in [0, 1]."""
    steps, period = router.get("steps"), router.get("period")
    if not (isinstance(steps, int) and isinstance(period, int) and steps >= 1 and period >= 1):
        raise ConfigError("l2c: the model's router has no valid steps and period")
    try:
        betas = np.asarray(router.get("betas"), dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError("l2c: the model's router betas are not a table of numbers") from None
    if betas.shape != (steps, depth, 2) or not ((betas >= 0) & (betas <= 1)).all():
        raise ConfigError(f"l2c: the model's router betas must be {steps} x {depth} x 2 in "
                          f"[0, 1], got shape {betas.shape}")


def cache_step(i: int, period: int) -> bool:
    return i % period != 0


@register
class L2C(BranchCache):
    name = "l2c"
    Config = L2CConfig

    @classmethod
    def check(cls, config: L2CConfig) -> None:
        if not 0.0 <= config.threshold <= 1.0:
            raise ConfigError(f"l2c: threshold must be in [0, 1], got {config.threshold}")

    def check_model(self) -> None:
        super().check_model()
        router = self.model.l2c
        if router is None:
            raise ConfigError("l2c: this model has no trained router (train one with "
                              "`cachenet diffusion router`)")
        check_router(router, len(self.model.net.blocks))
        if router["steps"] != self.steps:
            raise ConfigError(f"l2c: the router was trained for {router['steps']} steps, "
                              f"not {self.steps}")

    def reuse(self, i: int) -> frozenset[tuple[int, str]]:
        return reuse_schedule(self.model.l2c, i, self.config.threshold)  # type: ignore[arg-type]


def reuse_schedule(router: dict, i: int, threshold: float) -> frozenset[tuple[int, str]]:
    """The branches reused at step ``i``: a pure function of the router, the step
    and the threshold."""
    if not cache_step(i, router["period"]):
        return frozenset()
    return frozenset((b, br) for b, row in enumerate(router["betas"][i])
                     for br, beta in zip(("attn", "mlp"), row, strict=True) if beta < threshold)


def _routed(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
            beta: torch.Tensor | None, kept: dict) -> torch.Tensor:
    """Noise prediction with each branch mixed with ``kept`` by ``beta`` (depth x 2);
    with ``beta`` None, the full pass, filling ``kept``."""
    net = model.net
    h, c = net.begin(x, t, y)
    for b, block in enumerate(net.blocks):
        for k, (branch, fn) in enumerate((("attn", block.attn_branch),
                                          ("mlp", block.mlp_branch))):
            out = fn(h, c)
            if beta is None:
                kept[(b, branch)] = out
            else:
                out = beta[b, k] * out + (1 - beta[b, k]) * kept[(b, branch)]
            h = h + out
    return net.end(h, c)


def train_router(model: DiffusionModel, cfg: RouterConfig, device: torch.device | None = None,
                 progress: bool = True) -> dict:
    """Train an L2C router for ``model`` (a DiT, frozen) and return it as stored."""
    from tqdm import tqdm

    if model.arch != "dit":
        raise ConfigError("l2c routers are learned for diffusion transformers (dit)")
    check_router_config(cfg)
    device = device or next(model.net.parameters()).device
    net = model.net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    started = time.monotonic()
    gen = torch.Generator(device="cpu").manual_seed(training_seed(cfg.seed))
    k = model.num_classes
    ts = model.schedule.timesteps(cfg.steps)
    acp = model.schedule.alphas_cumprod()
    abar = [float(acp[t]) for t in ts] + [1.0]
    # Trajectories of the full model: x_i at every step, for random noise and labels.
    labels = torch.randint(0, k + 1, (cfg.trajectories,), generator=gen).to(device)
    x = torch.randn(cfg.trajectories, *model.image_shape, generator=gen).to(device)
    xs: list[torch.Tensor] = []

    def record(i: int, xi: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xs.append(xi)
        return torch.cat([net(xi[j:j + 256], t[j:j + 256], labels[j:j + 256])
                          for j in range(0, len(xi), 256)])

    with torch.no_grad():
        ddim(record, x, model.schedule, cfg.steps)
    steps = [i for i in range(1, cfg.steps) if cache_step(i, cfg.period)]
    logits = torch.full((cfg.steps, len(net.blocks), 2), cfg.init, device=device,
                        requires_grad=True)
    opt = torch.optim.Adam([logits], lr=cfg.lr)

    def pair(i: int, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kept: dict = {}
        with torch.no_grad():
            tp = torch.full((len(idx),), ts[i - 1], device=device, dtype=torch.long)
            _routed(model, xs[i - 1][idx], tp, labels[idx], None, kept)
            t = torch.full((len(idx),), ts[i], device=device, dtype=torch.long)
            target = ddim_step(xs[i][idx], net(xs[i][idx], t, labels[idx]), abar[i], abar[i + 1])
        return kept, t, target

    # The error of reusing everything, averaged over cache steps: the loss's unit.
    probe = torch.arange(min(cfg.batch, cfg.trajectories), device=device)
    with torch.no_grad():
        errs = []
        for i in steps:
            kept, t, target = pair(i, probe)
            zero = torch.zeros(len(net.blocks), 2, device=device)
            eps = _routed(model, xs[i][probe], t, labels[probe], zero, kept)
            errs.append(F.mse_loss(ddim_step(xs[i][probe], eps, abar[i], abar[i + 1]), target))
        unit = float(torch.stack(errs).mean()) + 1e-12
    bar = tqdm(range(cfg.iters), disable=not progress, desc="l2c router", leave=False)
    for it in bar:
        i = steps[it % len(steps)]
        idx = torch.randint(0, cfg.trajectories, (cfg.batch,), generator=gen).to(device)
        kept, t, target = pair(i, idx)
        beta = torch.sigmoid(logits[i])
        eps = _routed(model, xs[i][idx], t, labels[idx], beta, kept)
        err = F.mse_loss(ddim_step(xs[i][idx], eps, abar[i], abar[i + 1]), target) / unit
        loss = err + cfg.lam * beta.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 20 == 0:
            bar.set_postfix(err=f"{float(err.detach()):.3f}",
                            beta=f"{float(beta.detach().mean()):.2f}")
    betas = torch.sigmoid(logits.detach()).cpu()
    betas[[i for i in range(cfg.steps) if not cache_step(i, cfg.period)]] = 1.0
    for p in net.parameters():
        p.requires_grad_(True)
    return {"steps": cfg.steps, "period": cfg.period, "sampler": "ddim",
            "betas": betas.tolist(), "config": asdict(cfg),
            "elapsed_s": round(time.monotonic() - started, 1)}
