"""The ``cachenet`` command: a thin layer over keyword-only library functions.

The diffusion commands (``diffusion train``, ``diffusion router``, ``generate``) are in
:mod:`cachenet.cli.diffusion`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from cachenet.cli.diffusion import add_diffusion, add_generate
from cachenet.cli.signing import add_signing
from cachenet.core import strictjson
from cachenet.core.calibration import CALIBRATIONS
from cachenet.core.gate import SCORES
from cachenet.exceptions import CachenetError

log = logging.getLogger("cachenet")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return values


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object of keyword arguments")
    return value


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


class _Registered:
    """argparse choices read off a registry when first needed: importing the registry
    (the toolchain's, torch and all) is left to the commands that use it."""

    def __init__(self, names: Callable[[], list[str]]) -> None:
        self.names = names

    def __contains__(self, value: object) -> bool:
        return value in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _cache_archs() -> list[str]:
    from cachenet.toolchain.models import ARCHITECTURES

    return [name for name, (roles, _) in ARCHITECTURES.items() if "cache" in roles]


def _default_reference_dir() -> Path | None:
    """``$CACHENET_REFERENCE_DIR``, else the committed checkpoints of a source checkout
    (``bench/reference`` beside the package), else none."""
    configured = os.environ.get("CACHENET_REFERENCE_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    checkout = Path(__file__).resolve().parents[2] / "bench" / "reference"
    return checkout if checkout.is_dir() else None


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build a calibrated, verified cache bundle",
                       description="Train (or load) the full model, distil a cache model, "
                       "export it to ONNX, calibrate its gate and write a cache bundle.")
    p.add_argument("--dataset", required=True,
                   help="'digits' (embedded), a .npz file, or an image folder or .zip")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--full", default="resnet20",
                   help="full model: resnet20, resnet18, package.module:factory (with "
                   "--full-weights) or a TorchScript file (default: resnet20)")
    p.add_argument("--full-weights", type=Path, help="state dict or cachenet checkpoint")
    p.add_argument("--full-kwargs", type=_json_object, metavar="JSON",
                   help="keyword arguments for a package.module:factory full model")
    p.add_argument("--full-tta", default="auto", choices=["auto", "flip", "none"],
                   help="the full model's test-time augmentation: flip averages the logits of "
                   "the input and its mirror image (two passes); auto flips a model trained "
                   "here with flips and keeps what a checkpoint records (default auto)")
    p.add_argument("--image-size", type=int,
                   help="resize image-folder images to this square size")
    p.add_argument("--cache-arch", choices=_Registered(_cache_archs), metavar="ARCH",
                   help="cache model family (default: tinycnn, 1.7 M multiply-adds on "
                   "CIFAR; resnet8: 7.1 M, stronger; resnet20: 41 M, the strongest)")
    p.add_argument("--cache-widths", type=_ints,
                   help="tinycnn or resnet8 stage widths (default 12,24,48; tinycnn: 32,64 "
                   "for <= 8x8 inputs)")
    p.add_argument("--cache-depth", type=int, help="tinycnn convolutions per stage")
    p.add_argument("--cache-hidden", type=_ints, help="mlp hidden sizes, e.g. 64")
    p.add_argument("--epochs", type=int, help="full-model training epochs")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help="full-model training budget in minutes (the schedule fits it)")
    p.add_argument("--distill-epochs", type=int, help="cache-model distillation epochs")
    p.add_argument("--cached-teacher", action=argparse.BooleanOptionalAction, default=None,
                   help="run the full model once on every training image and its mirror, not "
                   "on every batch (default: for full models of >= 100 M MACs)")
    p.add_argument("--score", default="max_softmax", choices=list(SCORES),
                   help="the gate's confidence score (default max_softmax)")
    p.add_argument("--target", type=_unit, default=0.99,
                   help="agreement with the full model among edge answers (default 0.99)")
    p.add_argument("--delta", type=_unit, default=0.05, help="1 - confidence of the bound")
    p.add_argument("--escalation-budget", type=_unit,
                   help="calibrate to escalate at most this share instead of to --target")
    p.add_argument("--calibration", choices=CALIBRATIONS, default="marginal",
                   help="marginal: bound the disagreement over all the edge's answers; "
                   "class: also hold every class of the full model's answer to the target, "
                   "certifying those the data can (default marginal)")
    p.add_argument("--calibrate-on-test", type=_unit, default=0.0, metavar="SHARE",
                   help="move this share of the test split into the calibration split "
                   "(declared in the manifest); evaluate on the rest (default 0)")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    p.add_argument("--int8", action="store_true", help="also write an int8 model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="bundle name (default: <dataset>-<arch>)")
    p.add_argument("--cache-dir", type=Path,
                   help="where decoded data and trained models are cached "
                   "(default: $CACHENET_CACHE_DIR or .cachenet-cache)")
    p.add_argument("--limit-per-class", type=int, help="read at most this many images a class")
    p.add_argument("--reference-dir", type=Path, default=_default_reference_dir(),
                   help="trained checkpoints to reuse when the cache lacks them (default: "
                   "$CACHENET_REFERENCE_DIR, else a source checkout's bench/reference)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_run_build)


def _configs(args: argparse.Namespace, dataset_spec: str):
    """Full and distillation configs: the data set's defaults, with flags applied."""
    from dataclasses import replace

    from cachenet.toolchain.data import load_splits
    from cachenet.toolchain.distill import default_distill_config
    from cachenet.toolchain.full import default_full_config

    if args.epochs is None and args.time_budget is None and args.distill_epochs is None:
        return None, None
    splits = load_splits(dataset_spec, seed=args.seed, cache_dir=args.cache_dir,
                         limit_per_class=args.limit_per_class, image_size=args.image_size)
    full_cfg = default_full_config(splits)
    if args.epochs is not None:
        full_cfg = replace(full_cfg, epochs=args.epochs)
    if args.time_budget is not None:
        full_cfg = replace(full_cfg, time_budget_s=args.time_budget * 60.0)
    distill_cfg = default_distill_config(splits, args.cache_arch)
    if args.distill_epochs is not None:
        distill_cfg = replace(distill_cfg, epochs=args.distill_epochs)
    return full_cfg, distill_cfg


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def format_report(r) -> str:
    rows = [
        ("full model accuracy (test)", _fmt(r.full_accuracy, ".4f") + (
            "" if r.full_tta == "none" else
            f"  (test-time {r.full_tta}, 2 passes; one pass: "
            f"{_fmt(r.full_single_pass_accuracy, '.4f')})")),
        ("cache model accuracy (test)", _fmt(r.cache_accuracy, ".4f")),
        ("cache model agreement with full (test)", _fmt(r.cache_agreement, ".4f")),
        ("cachenet accuracy (edge + cloud)", _fmt(r.system_accuracy, ".4f")),
        (f"gate ({r.score}) threshold", _fmt(r.threshold, ".4f")),
        ("agreement at threshold (test)", _fmt(r.agreement, ".4f") + (
            "" if r.target_met_on_test is None else
            f"  (target {r.calibration['target']}: "
            f"{'met' if r.target_met_on_test else 'NOT met'})")),
        ("hit rate, answered at edge (test)", _fmt(r.hit_rate, ".4f")),
        ("calibration: agreement / bound", f"{_fmt(r.calibration['agreement'], '.4f')} / "
         f">= {_fmt(1 - r.calibration['disagreement_ucb'], '.4f')} "
         f"(n={r.calibration['n']})"),
        ("cache / full MACs (one pass)", (f"{r.cache_macs / 1e6:.3f}M / {r.full_macs / 1e6:.2f}M = "
                               f"1/{1 / r.macs_ratio:.1f}") if r.macs_ratio else
         f"{r.cache_macs / 1e6:.3f}M / n/a"),
        ("bundle size (edge files)", f"{r.bundle_bytes / 1024:.1f} KiB"),
        ("cache model, ONNX Runtime, batch 1", f"{r.cache_onnx_us:.1f} us"),
        ("full model, torch, batch 1", f"{r.full_torch_us:.1f} us"),
        ("ONNX parity max |diff|", f"{r.parity_max_abs_diff:.2e}"),
    ]
    for split in ("calib", "test"):
        c = r.classes.get(split)
        if c and c["worst_class"] is not None:
            rows.append((f"worst class agreement ({split})",
                         f"{c['worst_agreement']:.4f} (class {c['worst_class']})"))
    if r.classes.get("calib"):
        rows.append((f"classes certified ({r.classes['calibration']} calibration)",
                     f"{len(r.classes['calib']['certified'])} of "
                     f"{len(r.classes['calib']['certified'] + r.classes['calib']['uncertified'])}"
                     + (f"; not: {r.classes['calib']['uncertified']}"
                        if r.classes['calib']['uncertified'] else "")))
    if r.int8:
        rows.append(("int8: accuracy change / size", f"{r.int8['accuracy_change']:+.4f} / "
                     f"{r.int8['size_ratio']:.2f}x of fp32"))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"bundle {r.bundle}"] + [f"  {k:<{width}}  {v}" for k, v in rows])


def _run_build(args: argparse.Namespace) -> int:
    from cachenet.toolchain.build import build

    full_cfg, distill_cfg = _configs(args, args.dataset)
    report = build(dataset=args.dataset, out=args.out, full=args.full,
                   full_weights=args.full_weights, cache_arch=args.cache_arch,
                   cache_widths=args.cache_widths, cache_depth=args.cache_depth,
                   cache_hidden=args.cache_hidden, full_config=full_cfg,
                   distill_config=distill_cfg, score_kind=args.score, target=args.target,
                   delta=args.delta, escalation_budget=args.escalation_budget,
                   exporter=args.exporter, int8=args.int8, seed=args.seed,
                   cache_dir=args.cache_dir, name=args.name,
                   progress=not args.no_progress and sys.stderr.isatty(),
                   limit_per_class=args.limit_per_class, image_size=args.image_size,
                   full_kwargs=args.full_kwargs, full_tta=args.full_tta,
                   reference_dir=args.reference_dir, cached_teacher=args.cached_teacher,
                   calibration=args.calibration, calibrate_on_test=args.calibrate_on_test)
    print(format_report(report))
    if args.json:
        print(strictjson.dumps(report.to_dict()))
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run cloud, WAN and edge on this machine and compare",
                       description="Start cloud_server and edge_agent on loopback with an "
                       "emulated WAN between them, stream a workload with temporal locality, "
                       "and compare edge-only, cloud-only and cachenet.")
    p.add_argument("--rtt-ms", type=float, default=40.0, help="emulated round trip (default 40)")
    p.add_argument("--requests", type=int, default=400, help="requests per system (default 400)")
    p.add_argument("--mean-run", type=float, default=20.0,
                   help="mean length of a class run in the stream (default 20)")
    p.add_argument("--deadline-ms", type=float,
                   help="escalation deadline (default max(250, 4 x RTT))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--rebuild", action="store_true", help="rebuild the demo bundle")
    p.add_argument("--scenario", choices=["locality", "drift"], default="locality",
                   help="locality: compare the three systems; drift: the stream's classes "
                   "change and the cloud pushes specialised models (default locality)")
    p.add_argument("--after", type=int, default=300,
                   help="drift: requests per phase after the specialised model arrived")
    p.add_argument("--bundle", type=Path,
                   help="run this digits bundle instead of building the demo's own")
    p.add_argument("--partition-trainer", default="finetune",
                   help="drift: how the cloud makes partition models (finetune, or oracle: "
                   "the full model folded into the partition; see cachenet-cloud --help)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from cachenet.sim.demo import format_table, install_sigterm_as_interrupt, run_demo

    if args.requests < 10:
        raise CachenetError("--requests must be at least 10")
    install_sigterm_as_interrupt()
    if args.scenario == "drift":
        from cachenet.sim.drift import format_drift, run_drift_demo

        drift = run_drift_demo(rtt_ms=args.rtt_ms, after=args.after, seed=args.seed,
                               cache_dir=args.cache_dir, progress=sys.stderr.isatty(),
                               bundle=args.bundle, partition_trainer=args.partition_trainer)
        print(format_drift(drift))
        if args.json:
            print(strictjson.dumps(drift))
        return 0 if drift["failed_requests"] == 0 else 1
    results = run_demo(rtt_ms=args.rtt_ms, requests=args.requests, mean_run=args.mean_run,
                       seed=args.seed, cache_dir=args.cache_dir, rebuild=args.rebuild,
                       deadline_ms=args.deadline_ms, progress=sys.stderr.isatty(),
                       bundle=args.bundle)
    print(format_table(results, args.rtt_ms, args.requests))
    if args.json:
        print(strictjson.dumps(results))
    return 0


def _rebuild_args(p: argparse.ArgumentParser) -> None:
    """A command that writes a built bundle again with something added."""
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dataset", required=True, help="the data set the bundle was built with")
    p.add_argument("--seed", type=int,
                   help="the seed it was built with (default: the manifest's; another is "
                        "refused)")


def _add_layercache(sub: argparse._SubParsersAction) -> None:
    from cachenet.layercache import KINDS

    p = sub.add_parser("layercache", help="add calibrated layer caches to a bundle",
                       description="Fit layer caches (early answers at a model's inner "
                       "layers: kNN, approximate-key and learned heads) to a bundle's full "
                       "model (the cloud) and cache model (the edge, as ONNX segments), "
                       "calibrate them together to the agreement target, and write a new "
                       "bundle. Give the data set and seed the bundle was built with.")
    _rebuild_args(p)
    p.add_argument("--where", default="cloud,edge", help="cloud, edge or both (default)")
    p.add_argument("--kinds", default="akey,knn,learned",
                   help=f"kinds to consider, of {', '.join(sorted(KINDS))} (default: all)")
    p.add_argument("--target", type=float, default=0.99, help="agreement with the full model")
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument("--budget", type=float, default=0.05,
                   help="all lookups together cost at most this share of the model's MACs")
    p.add_argument("--refresh", type=float, default=0.02,
                   help="share of hits re-checked against the full model when serving")
    p.add_argument("--workload", choices=["iid", "video"], default="iid",
                   help="replay the calibration split as this workload: iid (as it is) or "
                        "video (a camera's frames: objects held for runs, shifted, noisy); "
                        "the guarantee holds for streams like it")
    p.add_argument("--grid", type=int, default=4,
                   help="site features: activations average-pooled to grid x grid")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_layercache)


def _run_layercache(args: argparse.Namespace) -> int:
    from cachenet.toolchain.layerbundle import add_layer_caches
    from cachenet.toolchain.layerfit import LayerCacheConfig

    cfg = LayerCacheConfig(kinds=tuple(k for k in args.kinds.split(",") if k),
                           target=args.target, delta=args.delta, budget=args.budget,
                           refresh_rate=args.refresh, workload=args.workload, grid=args.grid)
    report = add_layer_caches(args.bundle, args.out, dataset=args.dataset, seed=args.seed,
                              where=tuple(w for w in args.where.split(",") if w), cfg=cfg,
                              cache_dir=args.cache_dir)
    for where in ("cloud", "edge"):
        c = report.get(where)
        if c is not None:
            print(f"{where}: layer caches answer {c['hit_rate']:.3f} of calibration inputs, "
                  f"agreement {_fmt(c.get('agreement'), '.4f')} (bound >= "
                  f"{_fmt(1 - c.get('disagreement_ucb', 1.0), '.4f')})")
    print(f"bundle {args.out} version {report['version']}")
    if args.json:
        print(strictjson.dumps(report))
    return 0


def _add_adapt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="add a calibrated label-shift gate to a bundle",
                       description="Calibrate the gate that re-weights the cache model's "
                       "posterior by the stream's class prior, as the agent estimates it "
                       "online, on streams replayed over the bundle's calibration split, and "
                       "write a new bundle with it (cachenet build adds it already). Give the "
                       "data set and seed the bundle was built with.")
    _rebuild_args(p)
    p.add_argument("--target", type=float, help="agreement target (default: the gate's)")
    p.add_argument("--cache-dir", type=Path)
    p.set_defaults(func=_run_adapt)


def _run_adapt(args: argparse.Namespace) -> int:
    from cachenet.toolchain.adapt import add_label_shift

    c = add_label_shift(args.bundle, args.out, dataset=args.dataset, seed=args.seed,
                        target=args.target, cache_dir=args.cache_dir)
    print(f"label-shift gate: threshold {c['threshold']:.6f}; answers {c['hit_rate']:.3f} of "
          f"simulated stream inputs, agreement {_fmt(c.get('agreement'), '.4f')} (bound >= "
          f"{_fmt(1 - c['disagreement_ucb'], '.4f')})")
    print(f"bundle {args.out} version {c['version']}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the cloud's versioned store of cache bundles",
                       description="List, push and roll back the cache bundles the cloud "
                       "serves to agents (per agent, or fleet-wide as 'default').")
    p.add_argument("--store", type=Path,
                   help="store directory (default: $CACHENET_STORE or .cachenet-store)")
    p.add_argument("--agent", default="default", help="agent id (default: the whole fleet)")
    p.add_argument("--keep", type=int, default=5, help="versions kept per agent (default 5)")
    p.add_argument("--json", action="store_true")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="stored versions, newest last")
    push = actions.add_parser("push", help="verify a bundle and make it current")
    push.add_argument("bundle", type=Path)
    push.add_argument("--signing-key", type=Path,
                      help="sign the stored version with this key (cachenet keys)")
    back = actions.add_parser("rollback", help="make an older version current")
    back.add_argument("--to", help="bundle version or sequence number (default: the previous)")
    p.set_defaults(func=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from cachenet.fleet.store import ModelStore, default_store_dir

    key = None
    if getattr(args, "signing_key", None) is not None:
        from cachenet.core.signing import load_private_key

        key = load_private_key(args.signing_key)
    store = ModelStore(args.store or default_store_dir(), keep=args.keep, signing_key=key)
    if args.action == "push":
        rows = [store.push(args.bundle, agent=args.agent)]
    elif args.action == "rollback":
        rows = [store.rollback(agent=args.agent, to=args.to)]
    else:
        rows = store.list(agent=args.agent)
    if args.json:
        print(strictjson.dumps([r.to_dict() for r in rows]))
        return 0
    if not rows:
        print(f"no versions stored for agent {args.agent}")
    for r in rows:
        print(f"{'*' if r.current else ' '} {r.seq:>4}  {r.version}  {r.name:<24} {r.created}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachenet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_adapt(sub)
    _add_build(sub)
    _add_demo(sub)
    add_diffusion(sub)
    add_generate(sub)
    add_signing(sub)
    _add_layercache(sub)
    _add_models(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else
                        logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR if args.verbose < 3 else logging.DEBUG)
    try:
        return args.func(args)
    except CachenetError as exc:
        print(f"cachenet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cachenet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
