#!/usr/bin/env python
"""Specialised against general cache model, on a CIFAR-10 class-run stream: steady state.

The stream (seeded): runs of mean length 50, two or three classes active in
each run, images from the test split. For each run, a partition model for its
classes is made as the cloud makes one (:func:`cachenet.specialize.train_partition`
from the general cache model on the training split, full-model labels, no
human ones; reused when the same classes come again) and its threshold is
calibrated at the agreement target on the calibration split drawn like the run
(with 20% from any class). On the run's inputs it answers where sure, hands
over to the general model where not, and escalates the rest.

What this measures is the model, not the loop: the run's classes are read off
the full model's labels of the run itself, as if the cloud had already seen
it; there are no escalated examples in the fine-tuning and no comparison
against the current model. It is the hit rate the specialised models reach
once they are on the agent. How fast they get there in the running system is
what ``cachenet demo --scenario drift`` shows.

    python bench/specialization.py --bundle bundles/cifar [--requests 2000] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cachenet import specialize as sp  # noqa: E402
from cachenet.bundle import verify_bundle  # noqa: E402
from cachenet.data import load_splits  # noqa: E402
from cachenet.export import onnx_logits  # noqa: E402
from cachenet.gate import outcome  # noqa: E402
from cachenet.models import load_checkpoint  # noqa: E402
from cachenet.stream import class_run_stream  # noqa: E402
from cachenet.train import predict_logits  # noqa: E402
from cloud_server.model import load_full_model  # noqa: E402


def runs_of(groups: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run (a stretch with one active group) of the stream."""
    cuts = np.flatnonzero(np.diff(groups)) + 1
    bounds = [0, *cuts.tolist(), len(groups)]
    return list(itertools.pairwise(bounds))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a CIFAR-10 bundle")
    p.add_argument("--dataset", default=str(ROOT.parent / "shared/data/cifar10-jpg.zip"))
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--mean-run", type=float, default=50.0)
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=sp.FinetuneConfig.epochs,
                   help="fine-tuning epochs a partition (default: the cloud's)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not Path(args.dataset).exists():
        print(f"skipped: {args.dataset} not found", file=sys.stderr)
        return 0
    started = time.monotonic()
    general = verify_bundle(args.bundle)
    full, _ = load_full_model(args.bundle, device="cpu")
    base, _, _ = load_checkpoint(args.bundle / general.data["full_model"]["cache_checkpoint"])
    splits = load_splits(args.dataset, seed=int(general.data["dataset"]["seed"]))
    replay = sp.ReplayData.from_splits(splits, full)
    idx, groups = class_run_stream(splits.test.y, args.requests, mean_run=args.mean_run,
                                   active=(2, 3), seed=args.seed, return_groups=True)
    x, y = splits.test.x[idx], splits.test.y[idx]
    full_lab = predict_logits(full, x).argmax(1)
    score_kind = general.gate["score"]
    g_lab, g_conf = outcome(onnx_logits(args.bundle / "model.onnx", x), score_kind)
    g_local = g_conf >= general.gate["threshold"]

    cfg = sp.FinetuneConfig(epochs=args.epochs, seed=args.seed)
    library: dict[tuple[int, ...], object] = {}
    s_lab, s_local = g_lab.copy(), np.zeros(len(x), bool)
    train_s = 0.0
    per_run = []
    for start, end in runs_of(groups):
        hist = sp.normalise_histogram(np.bincount(full_lab[start:end], minlength=10), 10)
        classes = sp.active_classes(hist)
        if classes not in library:
            t0 = time.perf_counter()
            library[classes] = sp.train_partition(base, classes, replay, cfg=cfg)
            train_s += time.perf_counter() - t0
        model = library[classes]
        cal = sp.heldout_like(hist, replay, 4000, uniform_share=0.2, half=0, seed=start)
        c_lab, c_conf = outcome(predict_logits(model, replay.hold_x[cal]), score_kind,
                                {"classes": classes, "other_index": len(classes)})
        calibration = sp.calibrate_answerable(c_conf, c_lab == replay.hold_full[cal],
                                              score_kind=score_kind, target=args.target,
                                              delta=0.05)
        lab, conf = outcome(predict_logits(model, x[start:end]), score_kind,
                            {"classes": classes, "other_index": len(classes)})
        sure = conf >= calibration.threshold
        handover = ~sure & g_local[start:end]
        s_lab[start:end] = np.where(sure, lab, g_lab[start:end])
        s_local[start:end] = sure | handover
        per_run.append({"start": start, "classes": list(classes),
                        "threshold": calibration.threshold,
                        "partition_hit_rate": float(sure.mean()),
                        "hit_rate": float(s_local[start:end].mean()),
                        "general_hit_rate": float(g_local[start:end].mean())})

    def figures(local: np.ndarray, lab: np.ndarray) -> dict[str, float]:
        return {"hit_rate": float(local.mean()),
                "agreement": float((lab == full_lab)[local].mean()) if local.any() else None,
                "system_accuracy": float((np.where(local, lab, full_lab) == y).mean())}

    gen, spec = figures(g_local, g_lab), figures(s_local, s_lab)
    result = {
        "dataset": args.dataset, "bundle": str(args.bundle), "requests": args.requests,
        "mean_run": args.mean_run, "active": [2, 3], "target": args.target,
        "runs": len(per_run), "partition_models": len(library),
        "train_s_total": round(train_s, 1),
        "full_accuracy_on_stream": float((full_lab == y).mean()),
        "general": gen, "specialized": spec,
        "hit_rate_ratio": spec["hit_rate"] / gen["hit_rate"] if gen["hit_rate"] else None,
        "wall_s": round(time.monotonic() - started, 1), "per_run": per_run,
        "command": "python bench/specialization.py " + " ".join(sys.argv[1:] if argv is None
                                                                else argv)}
    print(f"general cache model: {json.dumps(gen)}\nspecialised:         {json.dumps(spec)}\n"
          f"hit-rate ratio {result['hit_rate_ratio']} over {len(per_run)} runs, "
          f"{len(library)} partition models trained in {train_s:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "per_run"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
