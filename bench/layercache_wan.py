"""The ``video`` trace end to end at 4g: cloud_only, cachenet and cachenet_layercache.

Real daemons on loopback, the WAN proxy between agent and cloud (the suite's
``4g``: 50 ms RTT, 10 Mbit/s), requests one at a time through the agent's
ZeroMQ API as an application sends them:

* ``cloud_only``: the plain bundle's agent, every request escalated;
* ``cachenet``: the plain bundle's agent and cloud (cache model and gate);
* ``cachenet_layercache``: the layered bundle (``cachenet layercache``): the
  agent serves its cache model's layer caches, which learn the cloud's answers
  to its escalations, and the cloud serves the full model with its own
  (``--layer-cache``).

Each system gets a fresh agent (its tables start as the bundle ships them).

    python -m bench.layercache_wan --bundle bundles/cifar --layered bundles/cifar-layered

Writes ``layercache-wan.json`` beside ``layercache.json``; ``python -m bench.layercache``
puts it in the report.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import provenance
from bench.layered import AGENT_ARGS, AGENT_ENV
from bench.provenance import ROOT
from bench.suite import NETWORKS
from bench.traces import make_trace, trace_inputs
from cachenet.sim.fleet import Fleet, FleetConfig

DEADLINE_MS = 2000


def stream(client: Any, x: np.ndarray, policy: str) -> dict[str, np.ndarray]:
    lat, labels, sources, by = [], [], [], []
    for frame in x:
        t = time.perf_counter()
        answer = client.infer(frame, timeout=30, policy=policy)
        lat.append((time.perf_counter() - t) * 1e3)
        labels.append(answer["label"])
        sources.append(answer["source"])
        by.append(answer.get("answered_by", "model"))
    return {"latencies_ms": np.asarray(lat), "labels": np.asarray(labels),
            "sources": np.asarray(sources), "by": np.asarray(by)}


def summary(run: dict[str, np.ndarray], y: np.ndarray) -> dict[str, Any]:
    lat = run["latencies_ms"]
    layer = np.asarray([":" in b for b in run["by"]])
    return {"n": len(y), "mean_ms": float(lat.mean()), "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "accuracy": float((run["labels"] == y).mean()),
            "escalation_rate": float((run["sources"] != "edge").mean()),
            "fallbacks": int((run["sources"] == "edge-fallback").sum()),
            "layer_hits": float(layer.mean())}


def run_wan(bundle: Path, layered: Path, x: np.ndarray, y: np.ndarray, warm: np.ndarray,
            network: str) -> dict[str, Any]:
    rows = {}
    systems = (("cloud_only", bundle, "cloud", ()), ("cachenet", bundle, "auto", ()),
               ("cachenet_layercache", layered, "auto", ("--layer-cache",)))
    with tempfile.TemporaryDirectory(prefix="cachenet-lc-wan-") as tmp:
        for system, b, policy, flags in systems:
            config = FleetConfig(b, link=NETWORKS[network], workdir=Path(tmp), name=system,
                                 cloud_args=("--log-level", "WARNING", *flags),
                                 deadline_ms=DEADLINE_MS, agent_args=AGENT_ARGS,
                                 agent_env=AGENT_ENV)
            with Fleet(config) as fleet, fleet.agents[0].client() as client:
                for frame in warm:  # connections and sessions; never seen again
                    client.infer(frame, policy="cloud", timeout=30)
                rows[system] = summary(stream(client, x, policy), y)
                print(f"{system:>20}: {rows[system]}", flush=True)
    return {"rows": rows, "network": network}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--layered", type=Path, required=True, help="the bundle with layer caches")
    p.add_argument("--dataset", default=str(ROOT.parent / "shared/data/cifar10-jpg.zip"))
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--network", default="4g", choices=sorted(NETWORKS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    provenance.start()
    if not Path(args.dataset).exists():
        print(f"skipped: data set {args.dataset} not found", file=sys.stderr)
        return 0
    from cachenet.core.bundle import verify_bundle
    from cachenet.toolchain.data import load_bundle_splits

    splits = load_bundle_splits(args.dataset, verify_bundle(args.bundle).data["dataset"])
    idx = make_trace("video", splits.test.y, args.requests, seed=args.seed)
    x, y = trace_inputs("video", splits.test.x, idx, args.seed), splits.test.y[idx]
    warm = splits.calib.x[:5]
    result = run_wan(args.bundle, args.layered, x, y, warm, args.network)
    provenance.write(args.out / "layercache-wan.json", result,
                     provenance.provenance("bench.layercache_wan", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
