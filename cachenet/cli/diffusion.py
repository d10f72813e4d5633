"""``cachenet diffusion train|router`` (make a diffusion model) and ``cachenet generate``
(ask a cloud server for images)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cachenet.core import strictjson
from cachenet.exceptions import CachenetError

if TYPE_CHECKING:
    import numpy as np


def _param(text: str) -> tuple[str, int | float | str]:
    """``KEY=VALUE``: the value an int if it reads as one, else a float, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate images with a diffusion model",
                       description="Ask a cloud server (cachenet-cloud --diffusion) for "
                       "images, or make them here from a checkpoint, with a step cache, "
                       "and write them as one PNG grid.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--cloud", metavar="HOST:PORT", help="a cloud server to ask")
    where.add_argument("--checkpoint", type=Path,
                       help="a diffusion checkpoint to generate with here (needs torch)")
    p.add_argument("--model", default="", help="diffusion model (default: the server's)")
    p.add_argument("--label", help="class index or name (default: unconditional)")
    p.add_argument("--count", type=int, default=4, help="images (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--sampler", default="ddim", help="ddim or dpmpp-2m (default ddim)")
    p.add_argument("--policy", default="none",
                   help="step cache: none, deepcache, fora, l2c (default none)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="a policy parameter, e.g. interval=3 (repeatable)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale (default 1: none)")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG grid to write")
    p.add_argument("--scale", type=int, default=1, help="enlarge each pixel this many times")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--no-progress", action="store_true", help="hide the progress line")
    p.set_defaults(func=_run_generate)


def _label_index(text: str | None, classes: list[str], model: str) -> int | None:
    """``--label`` as an index: an integer, or one of ``classes`` by name."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    if text not in classes:
        raise CachenetError(f"--label: '{text}' is not a class of model '{model}' "
                            f"({', '.join(classes) or 'none'})")
    return classes.index(text)


def _from_cloud(args: argparse.Namespace, fields: dict,
                show: Callable[[int, int], None] | None) -> tuple[np.ndarray, str, dict]:
    from cachenet.protocol.client import GenerateClient

    with GenerateClient(args.cloud) as cloud:
        label = args.label
        if label is not None and not label.lstrip("-").isdigit():
            info = cloud.info(timeout=30)
            name = args.model or info.default_model
            classes = next((list(m.classes) for m in info.models if m.name == name), [])
            label = _label_index(label, classes, name)
        out = cloud.generate(label=None if label is None else int(label), **fields,
                             timeout=args.timeout, on_progress=show)
    return out.images, out.model_name, out.timings


def _here(args: argparse.Namespace, fields: dict,
          show: Callable[[int, int], None] | None) -> tuple[np.ndarray, str, dict]:
    import torch

    from cachenet.diffusion.generate import GenerateRequest, Generator
    from cachenet.diffusion.nets import load_checkpoint

    name = args.model or args.checkpoint.stem
    model = load_checkpoint(args.checkpoint).to("cuda" if torch.cuda.is_available() else "cpu")
    label = _label_index(args.label, model.classes, name)
    gen = Generator({name: model}).run(GenerateRequest(label=label, **fields), on_step=show)
    us = int(gen.compute_s * 1e6)
    return gen.images, gen.model, {
        "queue_us": 0, "compute_us": us, "total_us": us, "macs_per_image": gen.macs,
        "macs_full_per_image": gen.macs_full, "layers_skipped": gen.skipped,
        "steps": gen.steps, "batch_images": gen.batch_images}


def _run_generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from cachenet.diffusion.generate import image_grid

    if args.scale < 1:
        raise CachenetError(f"--scale must be at least 1, got {args.scale}")
    progress = not args.no_progress and sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        print(f"\rstep {done}/{total}", end="\n" if done == total else "", file=sys.stderr,
              flush=True)

    fields = {"model": args.model, "count": args.count, "seed": args.seed,
              "steps": args.steps, "sampler": args.sampler, "policy": args.policy,
              "params": dict(args.param), "guidance": args.guidance}
    run = _from_cloud if args.cloud else _here
    images, model_name, t = run(args, fields, show if progress else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, scale=args.scale)).save(args.out, format="PNG")
    print(f"{len(images)} image(s) {'x'.join(map(str, images.shape[1:]))} from "
          f"'{model_name}', {t['steps']} steps, {args.sampler}, policy {args.policy}")
    print(f"  MACs per image  {t['macs_per_image'] / 1e9:.3f} G of "
          f"{t['macs_full_per_image'] / 1e9:.3f} G without a step cache "
          f"({t['macs_per_image'] / max(1, t['macs_full_per_image']):.1%})")
    print(f"  layers skipped  {t['layers_skipped']:.1%}")
    print(f"  compute         {t['compute_us'] / 1e6:.3f} s (queued {t['queue_us'] / 1e6:.3f} s, "
          f"server total {t['total_us'] / 1e6:.3f} s)")
    print(f"wrote {args.out}")
    if args.json:
        print(strictjson.dumps({"out": str(args.out), "model": model_name,
                          "shape": list(images.shape), **t}))
    return 0




def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` for an architecture option; the value read as JSON when it parses
    (numbers, lists), else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def add_diffusion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diffusion", help="train diffusion models and their L2C routers",
                       description="Make the diffusion models the cloud generates with "
                       "(cachenet-cloud --diffusion NAME=PATH).")
    actions = p.add_subparsers(dest="action", required=True)
    t = actions.add_parser("train", help="train a class-conditional denoiser",
                           description="Train a U-Net or a DiT on a data set's training "
                           "images (epsilon prediction, EMA weights, CUDA when present). "
                           "Trained models are cached: the same command again returns at "
                           "once, and an interrupted one resumes.")
    t.add_argument("--dataset", required=True, help="'digits', an image folder or a .zip")
    t.add_argument("--arch", choices=("unet", "dit"), required=True)
    t.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    t.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="an architecture option, e.g. channels=64 or mults=[1,2,2,2] "
                   "(repeatable)")
    t.add_argument("--budget", type=float, help="time budget in seconds")
    t.add_argument("--steps", type=int, default=100_000, help="optimizer steps at most")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_run_train)
    r = actions.add_parser("router", help="learn an L2C schedule for a DiT checkpoint",
                           description="Train Learning-to-Cache's router for a DiT (the "
                           "model frozen) and store it in the checkpoint, for the DDIM "
                           "step count given.")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--steps", type=int, default=50, help="DDIM steps it is learned for")
    r.add_argument("--iters", type=int, default=1500)
    r.add_argument("--lam", type=float, default=1.0,
                   help="weight of the cost of computing against the error (default 1)")
    r.add_argument("--device", help="default: CUDA when present")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_run_router)


def _run_train(args: argparse.Namespace) -> int:
    from cachenet.diffusion.recipes import train_model, training_images
    from cachenet.diffusion.train import DiffusionTrainConfig

    images, labels, classes = training_images(args.dataset)
    cfg = DiffusionTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               time_budget_s=args.budget, seed=args.seed)
    _, history = train_model(args.arch, images, labels, classes, options=dict(args.option),
                             cfg=cfg, out=args.out, progress=not args.no_progress)
    how = "cached" if history.get("cached") else "trained"
    print(f"{how}: {args.arch} on {len(images)} images, {history.get('steps')} steps in "
          f"{history.get('elapsed_s')} s on {history.get('device')}, loss "
          f"{history.get('loss')}; wrote {args.out}")
    return 0


def _run_router(args: argparse.Namespace) -> int:
    import numpy as np

    from cachenet.diffusion.recipes import add_router
    from cachenet.diffusion.stepcache.l2c import RouterConfig

    cfg = RouterConfig(steps=args.steps, iters=args.iters, lam=args.lam)
    router = add_router(args.model, cfg, device=args.device, progress=not args.no_progress)
    betas = np.array(router["betas"])
    cache = betas[[i for i in range(len(betas)) if i % router["period"]]]
    print(f"router for {router['steps']} ddim steps in {router['elapsed_s']} s: at threshold "
          f"0.5 the cache steps reuse {(cache < 0.5).mean():.0%} of the layers; "
          f"wrote {args.model}")
    return 0
