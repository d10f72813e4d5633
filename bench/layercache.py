"""Layer caches, measured: Freeze Inference's measurement reproduced, each kind and all
together on ``iid``, ``runs50`` and ``video``, and the cloud's throughput with and without.

For each full model (our ResNet-20 from ``--bundle``, and the ResNet-18 of
``../shared/models``, the Freeze paper's model):

1. candidates at every site are fitted on 20,000 training images, then scored on
   the calibration split replayed as ``iid`` and as ``video``
   (:mod:`cachenet.toolchain.layerfit`);
2. **oracle potential** (how Freeze measured its 91.58%): the share of test
   images for which some candidate at a site within the first half of the
   model's MACs gives the uncached model's label, confidence ignored;
3. **calibrated**: for each kind alone and all together, the rules kept and
   calibrated to 0.99 agreement (delta 0.05); each test stream is answered by the
   real cascade (:class:`cachenet.layercache.LayerCascade`, the code the cloud
   runs) one request at a time, the tables learning from the misses as they go;
   measured: the share answered at no more than half the MACs, agreement with the
   uncached model on the same inputs, MACs and time per request against the
   uncached model's, and what the lookups cost (MACs, and time by a timer around
   each lookup); ``runs50`` and ``iid`` use the caches calibrated for ``iid``,
   ``video`` those calibrated for ``video``;
4. the MACs-agreement frontier of each kind on ``iid`` (targets 0.95 to 0.999);
5. the cloud's throughput on ``video`` from a fleet of 32 cameras (each its own
   seeded ``video`` stream; each batch of 32 holds one frame of every camera, as
   the dynamic batcher gathers them), the batcher's run function with layer
   caches (:func:`cloud_server.layered.layered_runner`) against without
   (:func:`cloud_server.model.torch_runner`), alternated in one run.

    python -m bench.layercache --bundle bundles/cifar [--quick] [--device cuda]

Results: ``bench/results/layercache.json``, ``layercache.md``, and plots.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import provenance
from bench.layercache_report import write_report
from bench.provenance import ROOT

KIND_SETS = {"akey": ("akey",), "knn": ("knn",), "learned": ("learned",),
             "all": ("akey", "knn", "learned")}
TARGETS = (0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


class Timed:
    """A layer cache whose lookups are timed."""

    def __init__(self, cache: Any) -> None:
        self.cache, self.seconds = cache, 0.0
        self.kind, self.config = cache.kind, cache.config

    def lookup(self, feats: np.ndarray):
        t = time.perf_counter()
        try:
            return self.cache.lookup(feats)
        finally:
            self.seconds += time.perf_counter() - t

    def fill(self, feats: np.ndarray, labels: np.ndarray) -> None:
        self.cache.fill(feats, labels)

    @property
    def lookup_macs(self) -> int:
        return self.cache.lookup_macs


def streams(splits: Any, n: int, seed: int, save: Path | None = None
            ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(inputs, ground-truth labels) of each trace, over the test split."""
    from bench.traces import make_trace, save_trace, trace_inputs

    x, y = splits.test.x, splits.test.y
    out = {}
    for name in ("iid", "runs50", "video"):
        idx = make_trace(name, y, n, seed=seed)
        if save is not None:
            save_trace(save / f"layercache-{name}.npz", name, idx, y, seed)
        out[name] = (trace_inputs(name, x, idx, seed), y[idx])
    return out


def plain_pass(model: Any, x: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """The uncached model's logits on ``x`` in batches of ``batch``, and seconds taken."""
    from cloud_server.model import torch_runner

    dev = next(model.parameters()).device
    run = torch_runner(model, dev)
    run(x[:batch])  # warm-up
    t = time.perf_counter()
    out = [run(x[i:i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(out), time.perf_counter() - t


def layered_pass(fitted: Any, staged_model: Any, x: np.ndarray, batch: int, k: int
                 ) -> dict[str, Any]:
    """The real cascade over ``x`` in order, ``batch`` inputs at a time, the tables
    learning from the model's answers between batches (as the cloud's runner does)."""
    from cachenet.core.gate import softmax
    from cachenet.toolchain.layerfit import to_cascade
    from cachenet.toolchain.sites import TorchRunner

    cascade = to_cascade(fitted, k)
    for rule in cascade.rules:
        rule.cache = Timed(rule.cache)
    runner = TorchRunner(staged_model)
    cascade.run(runner, x[:batch].copy(), min(batch, len(x)))  # warm-up, forgotten below
    cascade = to_cascade(fitted, k)
    for rule in cascade.rules:
        rule.cache = Timed(rule.cache)
    by, macs, labels = [], [], []
    t = time.perf_counter()
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        answered = cascade.run(runner, chunk, len(chunk))
        full = np.flatnonzero(answered.by < 0)
        if len(full):
            cascade.settle(answered, full, answered.labels[full],
                           softmax(answered.logits[full]).max(1))
        by.append(answered.by)
        macs.append(answered.macs)
        labels.append(answered.labels)
    seconds = time.perf_counter() - t
    return {"by": np.concatenate(by), "macs": np.concatenate(macs),
            "labels": np.concatenate(labels), "seconds": seconds,
            "lookup_seconds": sum(r.cache.seconds for r in cascade.rules),
            "rules": [r.name for r in cascade.rules],
            "lookup_seconds_per_rule": [r.cache.seconds for r in cascade.rules]}


def summarize(run: dict[str, Any], ref: np.ndarray, y: np.ndarray, plain_s: float,
              fitted: Any) -> dict[str, Any]:
    n, full = len(ref), fitted.full_macs
    hit = run["by"] >= 0
    lookup_macs = sum(c.cache.lookup_macs for c in fitted.rules)
    macs_saved = float(full - run["macs"].mean())
    time_saved = (plain_s - run["seconds"]) / n
    per_site = {name: 0 for name in fitted.site_names}
    for b in run["by"][hit]:
        per_site[fitted.site_names[fitted.rules[b].site]] += 1
    return {
        "rules": run["rules"], "n": n,
        "answered_by_caches": float(hit.mean()),
        "at_most_half_macs": float((run["macs"] <= full / 2).mean()),
        "agreement": float((run["labels"] == ref).mean()),
        "agreement_among_hits": float((run["labels"][hit] == ref[hit]).mean()) if hit.any()
        else None,
        "accuracy": float((run["labels"] == y).mean()),
        "uncached_accuracy": float((ref == y).mean()),
        "macs_per_request": float(run["macs"].mean()), "full_macs": full,
        "macs_saved_share": macs_saved / full,
        "ms_per_request": 1e3 * run["seconds"] / n, "uncached_ms_per_request": 1e3 * plain_s / n,
        "time_saved_share": time_saved * n / plain_s,
        "lookup_macs_per_request": lookup_macs,  # every request consults them all, at most
        "lookup_ms_per_request": 1e3 * run["lookup_seconds"] / n,
        "lookup_vs_saved_macs": lookup_macs / macs_saved if macs_saved > 0 else None,
        "lookup_vs_saved_time": (run["lookup_seconds"] / n) / time_saved if time_saved > 0
        else None,
        "lookup_ms_per_rule": {r: 1e3 * s / n for r, s in zip(
            run["rules"], run["lookup_seconds_per_rule"], strict=True)},
        "answered_per_site": {k: v / n for k, v in per_site.items()},
    }


def oracle_potential(prep: Any) -> dict[str, float]:
    """Share of (calibration-workload) inputs some candidate within the first half of the
    MACs answers with the uncached model's label, confidence ignored; per kind and all."""
    half = [c.site for c in prep.cands if prep.site_macs[c.site] <= prep.full_macs / 2]
    out = {}
    for name, kinds in KIND_SETS.items():
        rows = [j for j, c in enumerate(prep.cands) if c.kind in kinds and c.site in half]
        right = (prep.labels[rows] == prep.ref).any(0) if rows else np.zeros(len(prep.ref), bool)
        out[name] = float(right.mean())
    return out


def frontier(prep_cal: Any, prep_test: Any, cfg: Any) -> dict[str, list[dict[str, float]]]:
    """Per kind set and target: calibrated on the calibration workload, evaluated on the
    test stream's scores (tables learning in order)."""
    from cachenet.layercache.calibrate import evaluate_cascade
    from cachenet.toolchain.layerfit import choose

    out: dict[str, list[dict[str, float]]] = {}
    for name, kinds in KIND_SETS.items():
        points = []
        for target in TARGETS:
            fitted = choose(prep_cal, replace(cfg, kinds=kinds, target=target))
            if not fitted.rules:
                points.append({"target": target, "macs_share": 1.0, "agreement": 1.0,
                               "answered": 0.0})
                continue
            rows = [prep_test.cands.index(c) for c in fitted.rules]
            first, agree = evaluate_cascade(prep_test.conf[rows], prep_test.labels[rows],
                                            prep_test.ref, np.array(fitted.thresholds))
            lookups = np.cumsum([c.cache.lookup_macs for c in fitted.rules])
            macs = np.where(first >= 0,
                            np.asarray([prep_test.site_macs[c.site] for c in fitted.rules]
                                       )[np.maximum(first, 0)] + lookups[np.maximum(first, 0)],
                            prep_test.full_macs + lookups[-1])
            points.append({"target": target, "macs_share": float(macs.mean()
                                                                  / prep_test.full_macs),
                           "agreement": float(agree.mean()), "answered": float((first >= 0)
                                                                               .mean())})
        out[name] = points
    return out


def camera_fleet(images: np.ndarray, cameras: int, frames: int, seed: int) -> np.ndarray:
    """Frames of ``cameras`` video streams: frames x cameras x C x H x W."""
    from cachenet.toolchain.data.video import render, video_stream

    return np.stack([render(images, video_stream(len(images), frames, seed=seed + 1000 + c))
                     for c in range(cameras)], axis=1)


def interleaved(fleet: np.ndarray, cameras: int) -> np.ndarray:
    """Frame t of the first ``cameras`` cameras, then frame t + 1 of each, ..."""
    return np.ascontiguousarray(fleet[:, :cameras].reshape(-1, *fleet.shape[2:]))


def throughput(plain: Any, make_layered: Any, x: np.ndarray, batch: int, rounds: int = 3
               ) -> dict[str, Any]:
    """Frames per second through the batcher's run function without layer caches
    (``plain``) and with (a fresh one from ``make_layered`` each round), alternated; the
    median round of each. ``x``: ``batch`` cameras' frames, interleaved."""
    times: dict[str, list[float]] = {"plain": [], "layered": []}
    served: list[str] = []
    for _ in range(rounds):
        layered = make_layered()
        for name, run in (("plain", plain), ("layered", layered)):
            run(x[:batch].copy())  # warm-up
            if name == "layered":
                layered = make_layered()  # the warm-up's answers are forgotten
                run = layered
            t = time.perf_counter()
            outs = [run(x[i:i + batch]) for i in range(0, len(x), batch)]
            times[name].append(time.perf_counter() - t)
            if name == "layered":
                served = [b for o in outs for b in o.by]
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"batch": batch, "cameras": batch, "n": len(x), "plain_fps": len(x) / med["plain"],
            "layered_fps": len(x) / med["layered"], "ratio": med["plain"] / med["layered"],
            "plain_ms_per_request": 1e3 * med["plain"] / len(x),
            "layered_ms_per_request": 1e3 * med["layered"] / len(x),
            "answered_by_caches": float(np.mean([b != "full" for b in served]))}


def fitted_throughput(model: Any, fitted: Any, staged_model: Any, fleet: np.ndarray, k: int,
                      batch: int = 32) -> dict[str, Any]:
    from cachenet.toolchain.layerfit import to_cascade
    from cloud_server.layered import layered_runner
    from cloud_server.model import torch_runner

    dev = next(model.parameters()).device
    out = throughput(torch_runner(model, dev),
                     lambda: layered_runner(model, to_cascade(fitted, k), grid=staged_model.grid),
                     interleaved(fleet, batch), batch)
    return out | {"device": str(dev)}


def bundle_throughput(bundle: Path, fleet: np.ndarray, device: str, batches: list[int]
                      ) -> list[dict[str, Any]]:
    """As ``cachenet-cloud --layer-cache`` loads ``bundle``: its full model, with its layer
    caches and without, on ``device``."""
    from cloud_server.layered import layered_runner, load_layer_cascade
    from cloud_server.model import load_full_model, torch_runner

    model, manifest = load_full_model(bundle, device=device)
    dev = next(model.parameters()).device
    rows = []
    for batch in batches:
        def make(model=model, manifest=manifest):
            cascade, grid = load_layer_cascade(manifest, bundle)
            return layered_runner(model, cascade, grid=grid)
        row = throughput(torch_runner(model, dev), make, interleaved(fleet, batch), batch)
        rows.append(row | {"device": str(dev), "bundle": bundle.name,
                           "full": (manifest.data["full_model"].get("spec") or {}).get("arch")})
        print(f"{bundle.name} batch {batch}: {rows[-1]}", flush=True)
    return rows


def measure_model(name: str, model: Any, splits: Any, args: argparse.Namespace
                  ) -> dict[str, Any]:
    from cachenet.toolchain.layerfit import (
        LayerCacheConfig,
        choose,
        fit_candidates,
        score_workload,
    )
    from cachenet.toolchain.sites import staged

    t0 = time.monotonic()
    k = len(splits.classes)
    cfg = LayerCacheConfig(fit_limit=args.fit)
    cut = staged(model, cfg.grid)
    shape = splits.input_shape
    cands, site_macs, full_macs = fit_candidates(cut, shape, splits.train.x, None, cfg)
    print(f"{name}: {len(cands)} candidates fitted in {time.monotonic() - t0:.0f} s",
          flush=True)
    prep = {w: score_workload(cut, cands, site_macs, full_macs, splits.calib.x, None,
                              replace(cfg, workload=w)) for w in ("iid", "video")}
    test_prep = score_workload(cut, cands, site_macs, full_macs, splits.test.x, None, cfg)
    result: dict[str, Any] = {
        "model": name, "site_names": cut.site_names, "site_macs": site_macs,
        "full_macs": full_macs, "views": cut.views,
        "oracle_potential": {"test_iid": oracle_potential(test_prep),
                             "calib_video": oracle_potential(prep["video"])},
        "frontier_iid": frontier(prep["iid"], test_prep, cfg),
        "candidates": {}, "traces": {}}
    fitted = {(w, kn): choose(prep[w], replace(cfg, workload=w, kinds=kinds))
              for w in ("iid", "video") for kn, kinds in KIND_SETS.items()}
    for (w, kn), f in fitted.items():
        result["candidates"][f"{w}/{kn}"] = {"rules": [f"{f.site_names[c.site]}:{c.kind}"
                                                       for c in f.rules],
                                             "thresholds": f.thresholds,
                                             "calibration": f.calibration}
    for trace, (x, y) in streams(splits, args.requests, args.seed,
                                 args.out / "traces").items():
        ref_logits, plain_s = plain_pass(model, x, 1)
        ref = ref_logits.argmax(1)
        w = "video" if trace == "video" else "iid"
        result["traces"][trace] = {}
        for kn in KIND_SETS:
            run = layered_pass(fitted[(w, kn)], cut, x, 1, k)
            row = summarize(run, ref, y, plain_s, fitted[(w, kn)])
            result["traces"][trace][kn] = row
            print(f"{name} {trace:>7} {kn:>8}: answered {row['answered_by_caches']:.3f}, "
                  f"<= half MACs {row['at_most_half_macs']:.3f}, agreement "
                  f"{row['agreement']:.4f}, MACs saved {row['macs_saved_share']:.3f}, "
                  f"time {row['ms_per_request']:.2f} / {row['uncached_ms_per_request']:.2f} ms",
                  flush=True)
        if trace == "video":
            fleet = camera_fleet(splits.test.x, 32, max(64, args.requests // 16), args.seed)
            result["throughput_video"] = fitted_throughput(model, fitted[("video", "all")],
                                                           cut, fleet, k)
            print(f"{name} cloud throughput on video: {result['throughput_video']}", flush=True)
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def load_models(args: argparse.Namespace) -> dict[str, Any]:
    from cachenet.toolchain.layerbundle import full_model_of
    from cachenet.toolchain.models import for_inference, load_checkpoint

    models = {}
    if "resnet20" in args.models:
        models["resnet20"] = full_model_of(args.bundle, args.device)[0]
    if "resnet18" in args.models:
        if not args.resnet18.exists():
            print(f"skipped resnet18: {args.resnet18} not found", file=sys.stderr)
        else:
            m, _, _ = load_checkpoint(args.resnet18)
            models["resnet18"] = for_inference(m, args.device, fold=True)
    return models


def throughput_only(args: argparse.Namespace, argv: list[str] | None) -> int:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    with np.load(args.frames) as f:
        fleet = f["frames"].astype(np.float32) / 255.0
    rows = [r for b in args.throughput_only for r in bundle_throughput(b, fleet, args.device,
                                                                       args.batch)]
    provenance.write(args.out / "layercache-throughput.json",
                     {"rows": rows, "frames": str(args.frames)},
                     provenance.provenance("bench.layercache", argv))
    return 0


def export_frames(args: argparse.Namespace, splits: Any) -> int:
    fleet = camera_fleet(splits.test.x, 64, 48, args.seed)
    np.savez_compressed(args.export_frames, frames=np.round(fleet * 255).astype(np.uint8))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="a CIFAR-10 bundle (ResNet-20)")
    p.add_argument("--resnet18", type=Path,
                   default=ROOT.parent / "shared/models/cifar10-resnet18.pt")
    p.add_argument("--dataset", default=str(ROOT.parent / "shared/data/cifar10-jpg.zip"))
    p.add_argument("--models", default="resnet20,resnet18")
    p.add_argument("--requests", type=int, default=1000, help="requests per trace")
    p.add_argument("--fit", type=int, default=20000, help="training images the caches fit")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="300 requests, 5,000 fit images")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--export-frames", type=Path,
                   help="write 48 frames of a fleet of 64 cameras (uint8 .npz) and exit")
    p.add_argument("--throughput-only", type=Path, nargs="+", metavar="LAYERED_BUNDLE",
                   help="only the cloud's throughput with each bundle's layer caches against "
                        "without, on --frames, at each --batch (e.g. on a GPU)")
    p.add_argument("--frames", type=Path, help="frames written by --export-frames")
    p.add_argument("--batch", type=int, nargs="+", default=[32])
    args = p.parse_args(argv)
    provenance.start()
    if args.throughput_only:
        return throughput_only(args, argv)
    if args.bundle is None:
        p.error("--bundle is required")
    if args.quick:
        args.requests, args.fit = 300, 5000
    if not Path(args.dataset).exists():
        print(f"skipped: data set {args.dataset} not found", file=sys.stderr)
        return 0
    from threadpoolctl import threadpool_limits

    from cachenet.core.bundle import verify_bundle
    from cachenet.toolchain.data import load_bundle_splits

    threadpool_limits(1, user_api="blas")  # as the cloud's layered runner does
    started = time.monotonic()
    splits = load_bundle_splits(args.dataset, verify_bundle(args.bundle).data["dataset"])
    if args.export_frames:
        return export_frames(args, splits)
    results = {name: measure_model(name, model, splits, args)
               for name, model in load_models(args).items()}
    stamp = provenance.provenance("bench.layercache", argv)
    out = {"models": results, "requests": args.requests, "fit": args.fit, "seed": args.seed,
           "device": args.device, "wall_s": round(time.monotonic() - started, 1)}
    for m in results.values():
        m["provenance"], m["device"] = stamp, args.device
    previous = args.out / "layercache.json"
    if previous.exists():  # models measured by an earlier command stay, with their provenance
        kept = json.loads(previous.read_text()).get("models", {})
        out["models"] = {**{k: v for k, v in kept.items() if k not in results}, **results}
    out = provenance.write(args.out / "layercache.json", out, stamp, default=float)
    write_report(out, args.out)
    print(f"wrote {args.out}/layercache.json and layercache.md in {out['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
