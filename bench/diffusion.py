"""Step caches for diffusion models, measured as DeepCache and Learning-to-Cache measure them.

For a U-Net (DeepCache: uniform 1:N, N = 2..5, at skip branches 0 and 2; the
non-uniform strategy at N = 2..5 and with its centre moved; the last steps full)
and a DiT (FORA, N = 2..5; L2C at several thresholds of its learned
router), each against the uncached DDIM sampler on the same model and against
DDIM with fewer steps at the same multiply-adds:

* **MACs per image**, counted from the units each generation actually ran;
* **wall time per image** and its ratio to the uncached sampler, in the same run on the
  same machine (batches of ``--batch``, CUDA synchronised, after a warm-up);
* **FID** over ``--samples`` class-balanced samples (labels 0..9 in turn) against the
  test split, on the penultimate features of the full classifier trained here
  (``--judge``; see :mod:`cachenet.diffusion.quality`), and its change relative to the
  uncached sampler;
* **PSNR** against the uncached sampler's images from the same noise, and the
  classifier's **agreement** with its labels on them;
* the uncached sampler from other noise, for how much FID moves by chance.

Every configuration starts from the same noise. The steps (the models made as
``bench/reference/README.md`` says, with ``cachenet diffusion train`` and ``router``):

    python -m bench.diffusion reference --dataset ../shared/data/cifar10-jpg.zip \\
        --out bench/results/diffusion-reference.npz
    python -m bench.diffusion measure --unet models/diffusion-unet-cifar10.pt \\
        --dit models/diffusion-dit-cifar10.pt \\
        --reference bench/results/diffusion-reference.npz --out bench/results/diffusion.json
    python -m bench.diffusion report --results bench/results/diffusion.json

``--quick`` shrinks everything to a CPU smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench import provenance
from bench.provenance import ROOT
from cachenet.diffusion.generate import GenerateRequest, noise, sample, to_uint8
from cachenet.diffusion.nets import DiffusionModel, load_checkpoint
from cachenet.diffusion.quality import Judge, frechet, psnr, stats

log = logging.getLogger("bench.diffusion")
JUDGE = ROOT / "bench" / "reference" / "full-resnet20-cifar10-jpg-7f7547829ab08e5f.pt"
THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98)
#: DDIM with fewer steps: the frontier a step cache has to beat at the same MACs.
DDIM_STEPS = (10, 13, 17, 20, 25, 30, 35)
#: configurations whose first 80 samples are kept for the grids
GRIDS = {("deepcache", (("branch", 0), ("interval", 3))): "deepcache-3",
         ("ddim-steps", (("steps", 20),)): "ddim-20",
         ("fora", (("interval", 3),)): "fora-3",
         ("l2c", (("threshold", 0.5),)): "l2c-0.5"}


def configs(arch: str, model: DiffusionModel, quick: bool) -> list[tuple[str, dict]]:
    """(policy, params) of every cached configuration measured for ``arch``."""
    intervals = (2, 3) if quick else (2, 3, 4, 5)
    if arch == "unet":
        branches = sorted({0, model.net.branches // 4})
        out = [("deepcache", {"interval": n, "branch": b}) for b in branches for n in intervals]
        out += [("deepcache", {"interval": n, "branch": 0, "mode": "nonuniform"})
                for n in intervals]
        if not quick:  # where the non-uniform strategy puts its densest full steps
            out += [("deepcache", {"interval": 3, "branch": 0, "mode": "nonuniform",
                                   "center": c}) for c in (0.1, 0.5, 0.7)]
            out += [("deepcache", {"interval": 3, "branch": 0, "full_last": 5})]
        return out
    out = [("fora", {"interval": n}) for n in intervals]
    if model.l2c is not None:
        out += [("l2c", {"threshold": t}) for t in THRESHOLDS]
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, judge: Judge, ref: tuple) -> None:
        self.args, self.judge, self.ref = args, judge, ref
        self.device = torch.device(args.device)
        self.started = time.monotonic()
        self.stamp = provenance.provenance("bench.diffusion")  # the command, the machine
        n = args.samples
        self.labels = torch.arange(n) % 10
        self.noise: torch.Tensor | None = None

    def generate(self, model: DiffusionModel, steps: int, policy: str,
                 params: dict, start: torch.Tensor | None = None) -> dict:
        req = GenerateRequest(steps=steps, policy=policy, params=params)
        images, macs, full, skipped = [], 0, 0, 0.0
        start = self.noise if start is None else start
        assert start is not None
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, self.args.samples, self.args.batch):
            out, session = sample(model, req, x=start[i:i + self.args.batch],
                                  labels=self.labels[i:i + self.args.batch])
            images.append(to_uint8(out))
            macs, full, skipped = session.macs, session.full_macs * steps, session.skipped()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        imgs = np.concatenate(images)
        feats, preds = self.judge.read(imgs)
        return {"images": imgs, "preds": preds, "macs": int(macs), "macs_full_steps": int(full),
                "skipped": round(skipped, 4), "wall_s_per_image": wall / len(imgs),
                "fid": frechet(*stats(feats), *self.ref)}

    def measure(self, arch: str, model: DiffusionModel, out: dict) -> None:
        """Every configuration of ``arch`` in order of importance, until the arch's
        share of the deadline is spent: the uncached sampler, DDIM with fewer steps
        (the frontier both papers compare with), the cached configurations, and the
        uncached sampler again (its two wall times bracket the run)."""
        args = self.args
        model.to(self.device)
        until = time.monotonic() + args.deadline_s
        self.noise = noise((args.samples, *model.image_shape), seed=1234)
        self.warmup(model)
        base = self.generate(model, args.steps, "none", {})
        out["rows"].append(self._row(arch, "none", {}, args.steps, base, base))
        grids = {"none": base["images"][:80]}
        # The same sampler from other noise: how much FID moves by chance alone.
        other = self.generate(model, args.steps, "none", {},
                              noise((args.samples, *model.image_shape), seed=4321))
        out["rows"].append(self._row(arch, "none-other-noise", {}, args.steps, other, base))
        plan = [("ddim-steps", {"steps": s}) for s in DDIM_STEPS if s < args.steps]
        plan += configs(arch, model, args.quick)
        for policy, params in plan:
            if time.monotonic() > until:
                out["skipped"].append({"arch": arch, "policy": policy, "params": params,
                                       "why": "deadline"})
                continue
            steps = params["steps"] if policy == "ddim-steps" else args.steps
            r = self.generate(model, steps, "none" if policy == "ddim-steps" else policy,
                              {} if policy == "ddim-steps" else params)
            row = self._row(arch, policy, params, steps, r, base)
            out["rows"].append(row)
            name = GRIDS.get((policy, tuple(sorted(params.items()))))
            if name:
                grids[name] = r["images"][:80]
            log.info("%s %s %s: macs x%.2f wall x%.2f fid %.3f (base %.3f)", arch, policy,
                     params, row["macs_speedup"], row["wall_speedup"], row["fid"], row["fid_base"])
            self._save(out)
        again = self.generate(model, args.steps, "none", {})
        out["baseline_wall_ms"][arch] = [round(1e3 * base["wall_s_per_image"], 3),
                                         round(1e3 * again["wall_s_per_image"], 3)]
        self._save(out)
        np.savez_compressed(Path(args.out).with_name(f"diffusion-grids-{arch}.npz"), **grids)
        model.to("cpu")

    def warmup(self, model: DiffusionModel) -> None:
        """One batch through the whole sampler (kernels chosen, memory allocated)."""
        x = self.noise[:self.args.batch]
        sample(model, GenerateRequest(steps=self.args.steps), x=x, labels=self.labels[:len(x)])

    @staticmethod
    def _row(arch: str, policy: str, params: dict, steps: int, r: dict, base: dict) -> dict:
        return {"arch": arch, "policy": policy, "params": params, "steps": steps,
                "macs_per_image": r["macs"], "gmacs_per_image": round(r["macs"] / 1e9, 3),
                "macs_speedup": round(base["macs"] / r["macs"], 3),
                "layers_skipped": r["skipped"],
                "wall_ms_per_image": round(1e3 * r["wall_s_per_image"], 3),
                "wall_speedup": round(base["wall_s_per_image"] / r["wall_s_per_image"], 3),
                "fid": round(r["fid"], 3), "fid_base": round(base["fid"], 3),
                "fid_rel": round(r["fid"] / base["fid"] - 1, 4),
                "psnr_vs_uncached": (round(psnr(r["images"], base["images"]), 2)
                                     if r is not base else None),
                "agreement_vs_uncached": round(float((r["preds"] == base["preds"]).mean()), 4)}

    def _save(self, out: dict) -> None:
        """The results so far (a long run's partial results survive an interruption)."""
        provenance.write(Path(self.args.out), out, self.stamp)


def cmd_reference(args: argparse.Namespace) -> None:
    from cachenet.toolchain.data.imagefolder import load_imagefolder_arrays

    arrays = load_imagefolder_arrays(Path(args.dataset), cache_dir=None)
    judge = Judge.load(Path(args.judge))
    feats, _ = judge.read(arrays["x_test"])
    pick = np.random.default_rng(0).permutation(len(arrays["x"]))[:args.samples]
    train_feats, _ = judge.read(arrays["x"][np.sort(pick)])
    mu, cov = stats(feats)
    floor = frechet(*stats(train_feats), mu, cov)
    np.savez(args.out, mu=mu, cov=cov, n=len(feats), floor=floor, floor_n=len(train_feats))
    print(json.dumps({"test_images": len(feats), "dims": feats.shape[1],
                      f"fid_train{len(train_feats)}_vs_test": round(floor, 3)}))


def cmd_measure(args: argparse.Namespace) -> None:
    judge = Judge(Judge.load(Path(args.judge)).model.to(args.device))
    with np.load(args.reference) as f:
        ref = (f["mu"], f["cov"])
        floor = float(f["floor"])
    out = {"device": args.device,
           "device_name": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                           else platform.processor() or platform.machine()),
           "torch": torch.__version__, "samples": args.samples, "batch": args.batch,
           "steps": args.steps, "sampler": "ddim", "fid_floor_real_train_vs_test": floor,
           "judge": JUDGE.name if Path(args.judge) == JUDGE else str(args.judge),
           "models": {}, "rows": [], "skipped": [], "baseline_wall_ms": {}}
    bench = Bench(args, judge, ref)
    for arch, path in (("unet", args.unet), ("dit", args.dit)):
        if not path:
            continue
        model = load_checkpoint(path)
        out["models"][arch] = {"path": str(path), "meta": model.meta,
                               "gmacs_per_step": round(sum(model.unit_macs().values()) / 1e9, 4),
                               "params_m": round(sum(p.numel() for p in model.net.parameters())
                                                 / 1e6, 2),
                               "l2c": ({k: v for k, v in model.l2c.items() if k != "betas"}
                                       if model.l2c else None)}
        bench.measure(arch, model, out)
    out["elapsed_s"] = round(time.monotonic() - bench.started, 1)
    bench._save(out)


def _shown(path: Path) -> str:
    """A path relative to the checkout where it is in it."""
    path = path.resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def cmd_serve(args: argparse.Namespace) -> None:
    """A burst of concurrent one-image requests through the generation service's
    queue (:class:`cloud_server.generate.GenerationService`, the code the RPC runs),
    with batching (up to ``--batch-images``) and without (1), alternated."""
    import asyncio
    import statistics
    import threading

    from cachenet.diffusion.generate import Generator
    from cloud_server.generate import GenerationService, Stopper

    model = load_checkpoint(args.model).to(args.device)
    generator = Generator({"m": model}, max_count=args.batch_images)

    def burst(batch_images: int) -> tuple[float, int]:
        svc = GenerationService(generator, max_pending=args.requests,
                                max_batch_images=batch_images)
        try:
            t0 = time.perf_counter()
            futures = [svc.submit(GenerateRequest(label=i % model.num_classes, seed=i,
                                                  steps=args.steps, policy=args.policy),
                                  Stopper(None, threading.Event()), lambda d, t: None)
                       for i in range(args.requests)]
            images = sum(len(f.result()[0].images) for f in futures)
            elapsed = time.perf_counter() - t0
        finally:
            asyncio.run(svc.stop())
        return images / elapsed, svc.counts["batches"]

    burst(args.batch_images)  # warm-up
    rates: dict[int, list[float]] = {1: [], args.batch_images: []}
    batches: dict[int, int] = {}
    for _ in range(args.rounds):
        for b in (1, args.batch_images):
            rate, batches[b] = burst(b)
            rates[b].append(rate)
    med = {b: statistics.median(r) for b, r in rates.items()}
    out = {"device": args.device, "cpus": os.cpu_count(),
           "torch_threads": torch.get_num_threads(),
           "model": _shown(Path(args.model)), "requests": args.requests, "steps": args.steps,
           "policy": args.policy,
           "rounds": args.rounds, "images_per_s": {str(b): r for b, r in rates.items()},
           "median_images_per_s": {str(b): round(v, 3) for b, v in med.items()},
           "batches_per_burst": {str(b): n for b, n in batches.items()},
           "speedup": round(med[args.batch_images] / med[1], 3)}
    print(json.dumps(provenance.write(Path(args.out), out,
                                      provenance.provenance("bench.diffusion"))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("reference")
    f.add_argument("--dataset", required=True)
    f.add_argument("--judge", default=str(JUDGE))
    f.add_argument("--samples", type=int, default=2000)
    f.add_argument("--out", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--unet")
    m.add_argument("--dit")
    m.add_argument("--judge", default=str(JUDGE))
    m.add_argument("--reference", required=True)
    m.add_argument("--samples", type=int, default=2000)
    m.add_argument("--batch", type=int, default=500)
    m.add_argument("--steps", type=int, default=50)
    m.add_argument("--deadline-s", type=float, default=float("inf"),
                   help="seconds each model may take; configurations after it are skipped")
    m.add_argument("--quick", action="store_true")
    m.add_argument("--out", default=str(ROOT / "bench" / "results" / "diffusion.json"))
    sv = sub.add_parser("serve", help="generation throughput with and without batching")
    sv.add_argument("--model", required=True, help="a diffusion checkpoint")
    sv.add_argument("--requests", type=int, default=32)
    sv.add_argument("--steps", type=int, default=10)
    sv.add_argument("--policy", default="none")
    sv.add_argument("--batch-images", type=int, default=16)
    sv.add_argument("--rounds", type=int, default=3)
    sv.add_argument("--out", default=str(ROOT / "bench" / "results" /
                                         "diffusion-serving.json"))
    rep = sub.add_parser("report")
    rep.add_argument("--results", default=str(ROOT / "bench" / "results" / "diffusion.json"))
    args = p.parse_args()
    provenance.start()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.cmd == "report":
        from bench.diffusion_report import report

        report(Path(args.results))
        return
    {"reference": cmd_reference, "measure": cmd_measure, "serve": cmd_serve}[args.cmd](args)


if __name__ == "__main__":
    main()
