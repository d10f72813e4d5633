"""Which edge step gives the answers that disagree with the full model, on saved traces.

For each trace (saved by ``bench.suite`` under ``<suite out>/traces``) and each agent
configuration, a fresh agent of the bundle streams the trace through a real cloud
(no WAN delay: agreement, not latency, is measured) and the answers it gave on the
device are compared with the full model's, step by step (``model``: the gate,
``prior``: the label-shift gate, a layer cache's name). The bundle's gate alone,
offline, is the first row of each trace.

    python -m bench.steps --bundle bundles/r18-r20-m --suite bench/results/strong-suite \\
        --traces confusable,runs50 --out bench/results/strong-suite/steps.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import provenance
from bench.layered import AGENT_ARGS, AGENT_ENV
from bench.provenance import ROOT
from bench.suite import NETWORKS, labels_for, wait_audits, warm_up
from bench.traces import trace_inputs
from cachenet.sim.fleet import Fleet, FleetConfig

#: Agent configurations: extra flags.
CONFIGS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "class-control-slack-0": ("--class-control-slack", "0"),
    "no-class-control": ("--no-class-control",),
    "no-label-shift": ("--no-label-shift",),
}


def by_step(client: Any, x: np.ndarray, full: np.ndarray) -> dict[str, dict[str, int]]:
    """Edge answers and disagreements per step over the stream ``x``."""
    steps: dict[str, dict[str, int]] = {}
    for i in range(len(x)):
        answer = client.infer(x[i], timeout=30)
        if answer["source"] != "edge":
            continue
        s = steps.setdefault(answer.get("answered_by", "model"), {"answers": 0, "wrong": 0})
        s["answers"] += 1
        s["wrong"] += int(answer["label"] != full[i])
    return steps


def offline(bundle: Path, x: np.ndarray, full: np.ndarray) -> dict[str, dict[str, int]]:
    """The bundle's gate alone: what it answers of ``x``, and how many disagree."""
    from cachenet.core.runtime import load_cache_model

    pred = load_cache_model(bundle).predict(x)
    return {"model": {"answers": int(pred.local.sum()),
                      "wrong": int((pred.labels != full)[pred.local].sum())}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--suite", type=Path, required=True, help="a bench.suite output folder")
    p.add_argument("--traces", default="confusable,runs50")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--dataset", default=str(ROOT.parent / "shared/data/cifar10-jpg.zip"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    provenance.start()
    if args.dataset != "digits" and not Path(args.dataset).exists():
        print(f"skipped: data set {args.dataset} not found", file=sys.stderr)
        return 0
    from cachenet.core.bundle import verify_bundle
    from cachenet.toolchain.data import load_bundle_splits

    splits = load_bundle_splits(args.dataset, verify_bundle(args.bundle).data["dataset"])
    result: dict[str, Any] = {"bundle": str(args.bundle), "traces": {}}
    with tempfile.TemporaryDirectory(prefix="cachenet-steps-") as tmp, Fleet(FleetConfig(
            args.bundle, agents=0, workdir=Path(tmp), cloud_args=("--log-level", "WARNING"),
            deadline_ms=2000, agent_args=AGENT_ARGS, agent_env=AGENT_ENV)) as fleet:
        fleet.configure(NETWORKS["lan"])
        for name in (t for t in args.traces.split(",") if t):
            saved = np.load(args.suite / "traces" / f"{name}.npz")
            x = trace_inputs(name, splits.test.x, saved["indices"], int(saved["seed"]))
            full = labels_for(args.bundle, x)[1]
            rows = {"gate alone (offline)": offline(args.bundle, x, full)}
            for config in (c for c in args.configs.split(",") if c):
                with fleet.agent(f"{config}-{name}", args=CONFIGS[config]) as agent, \
                        agent.client() as client:
                    warm_up(client, x[0])
                    rows[config] = by_step(client, x, full)
                    wait_audits(client)
                total = sum(s["answers"] for s in rows[config].values())
                wrong = sum(s["wrong"] for s in rows[config].values())
                print(f"{name:>10} {config:>22}: {total} answered, {wrong} wrong, "
                      f"{rows[config]}", flush=True)
            result["traces"][name] = {"n": len(x), "configs": rows}
    provenance.write(args.out, result, provenance.provenance("bench.steps", argv))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
