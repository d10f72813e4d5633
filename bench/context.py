"""The ``context`` workload on a fleet: the CacheNet loop end to end (issue 26).

Several devices, each a real agent process behind the emulated WAN (``4g`` by
default), stream at once, each in a closed loop, a ``context`` trace of its own
(:func:`bench.traces.context_trace`): a context of 2-3 classes held for
``--per-context`` requests, class runs over images it has not shown, then
another. The systems, each on fresh agents of the same general bundle:

* ``cloud_only``: every request escalated;
* ``cachenet``: the general cache model, its gate, prior and audit;
* ``cachenet_specialized``: the same, on a specialising cloud
  (``--partition-trainer``, ``head`` by default: heads on the general model's
  frozen features, certified class by class, pushed as deltas);
* ``oracle``: the general model, escalating exactly where it disagrees with the
  full model: the latency floor for that model at full agreement.

Reported per device and overall: latency, accuracy, escalations, the agreement
of the edge's answers with the full model on every request it answered, pushes
(applied, rejected, bytes on the wire: the files a push carries), and per
context the requests and seconds from its start until a specialised model first
read a request on the device.

    python -m bench.context --bundle bundles/cifar --out bench/results/context
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench import provenance
from bench.layered import AGENT_ARGS, AGENT_ENV
from bench.provenance import ROOT
from bench.specializing import SpecializingCloud, oracle_answer
from bench.suite import NETWORKS, labels_for, wait_audits, warm_up
from bench.traces import context_trace
from cachenet.sim.fleet import Fleet, FleetConfig

SYSTEMS = ("cloud_only", "cachenet", "cachenet_specialized", "oracle")
DEADLINE_MS = 2000


def stream(client: Any, x: np.ndarray, full: np.ndarray, system: str) -> dict[str, Any]:
    """One device's closed loop: each request's start time, latency, answer."""
    starts, lat, labels, sources, versions = [], [], [], [], []
    policy = "cloud" if system == "cloud_only" else "auto"
    for i in range(len(x)):
        t0 = time.perf_counter()
        if system == "oracle":
            answer, ms = oracle_answer(client, x[i], int(full[i]), 30)
        else:
            answer = client.infer(x[i], timeout=30, policy=policy)
            ms = (time.perf_counter() - t0) * 1e3
        starts.append(t0)
        lat.append(ms)
        labels.append(answer["label"])
        sources.append(answer["source"])
        versions.append((answer.get("versions") or {}).get("cache", ""))
    return {"starts": np.asarray(starts), "latencies_ms": np.asarray(lat),
            "labels": np.asarray(labels), "sources": np.asarray(sources), "versions": versions}


def first_specialized(run: dict[str, Any], ctx: np.ndarray, general: str) -> list[dict]:
    """Per context: the requests and seconds from its start until a model pushed during
    it (neither the general one nor one that read a request of an earlier context) first
    read a request (None: never)."""
    out = []
    seen = {"", general}
    for c in np.unique(ctx):
        rows = np.flatnonzero(ctx == c)
        at = next((int(i) for i in rows if run["versions"][i] not in seen), None)
        seen |= {run["versions"][i] for i in rows}
        out.append({"context": int(c), "requests": None if at is None else int(at - rows[0]),
                    "seconds": None if at is None else
                    float(run["starts"][at] - run["starts"][rows[0]])})
    return out


def summary(runs: list[dict[str, Any]], ys: list[np.ndarray], fulls: list[np.ndarray]
            ) -> dict[str, Any]:
    lat = np.concatenate([r["latencies_ms"] for r in runs])
    labels = np.concatenate([r["labels"] for r in runs])
    src = np.concatenate([r["sources"] for r in runs])
    y, full = np.concatenate(ys), np.concatenate(fulls)
    edge = src == "edge"
    wrong = int((labels[edge] != full[edge]).sum())
    return {"n": len(y), "mean_ms": float(lat.mean()), "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "accuracy": float((labels == y).mean()),
            "escalation_rate": float((~edge).mean()), "fallbacks": int((src == "edge-fallback")
                                                                       .sum()),
            "edge_answers": int(edge.sum()), "edge_disagreements": wrong,
            "edge_agreement": 1.0 - wrong / int(edge.sum()) if edge.any() else None}


def pushed_bytes(store: Path, agent_id: str) -> tuple[int, int]:
    """(versions stored for ``agent_id``, bytes their pushes carry: the device view's
    files less those the device holds, and the manifest)."""
    from cachenet.core.manifest import read_manifest
    from cachenet.core.signing import device_view
    from cachenet.protocol.push import held_by_device

    versions = sorted((store / "agents" / agent_id / "versions").glob("*"))
    total = 0
    for v in versions:
        m = read_manifest(v)
        view = device_view(m.data)
        total += len(json.dumps(view)) + sum(
            int(e.get("bytes", 0)) for n, e in view["files"].items()
            if n not in held_by_device(view))
    return len(versions), total


def run_system(fleet: Fleet, system: str, xs: list[np.ndarray], fulls: list[np.ndarray]
               ) -> tuple[list[dict], list[dict]]:
    """Fresh agents, one per device, streaming at once; (runs, their final stats)."""
    with ExitStack() as stack:
        agents = [stack.enter_context(fleet.agent(f"{system}-{d}")) for d in range(len(xs))]
        clients = [stack.enter_context(a.client()) for a in agents]
        for c, x in zip(clients, xs, strict=True):
            warm_up(c, x[0])
        runs: list[dict | None] = [None] * len(xs)

        def go(d: int) -> None:
            with agents[d].client() as own:
                runs[d] = stream(own, xs[d], fulls[d], system)

        threads = [threading.Thread(target=go, args=(d,)) for d in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in clients:
            wait_audits(c)
        stats = [c.stats() for c in clients]
        ids = [a.id for a in agents]
    for s, agent_id in zip(stats, ids, strict=True):
        s["agent_id"] = agent_id
    return runs, stats  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--dataset", default=str(ROOT.parent / "shared/data/cifar10-jpg.zip"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "context")
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--contexts", type=int, default=2, help="contexts per device")
    p.add_argument("--per-context", type=int, default=2000, help="requests per context")
    p.add_argument("--network", default="4g", choices=sorted(NETWORKS))
    p.add_argument("--trainer", default="head", help="the specialising cloud's trainer")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    provenance.start()
    if args.dataset != "digits" and not Path(args.dataset).exists():
        print(f"skipped: data set {args.dataset} not found", file=sys.stderr)
        return 0
    from cachenet.core.bundle import verify_bundle
    from cachenet.toolchain.data import load_bundle_splits

    started = time.monotonic()
    manifest = verify_bundle(args.bundle)
    splits = load_bundle_splits(args.dataset, manifest.data["dataset"])
    traces = [context_trace(splits.test.y, args.contexts, args.per_context,
                            seed=args.seed * 1000 + d) for d in range(args.devices)]
    xs = [np.ascontiguousarray(splits.test.x[idx]) for idx, _, _ in traces]
    ys = [splits.test.y[idx] for idx, _, _ in traces]
    fulls = [labels_for(args.bundle, x)[1] for x in xs]
    systems = tuple(s for s in args.systems.split(",") if s)
    result: dict[str, Any] = {"systems": {}, "contexts": [t[2] for t in traces],
                              "devices": args.devices, "per_context": args.per_context,
                              "network": args.network, "trainer": args.trainer,
                              "bundle": str(args.bundle)}
    link = NETWORKS[args.network]
    args.out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="cachenet-context-") as tmp:
        work = Path(tmp)
        fleet = stack.enter_context(Fleet(FleetConfig(
            args.bundle, agents=0, workdir=work / "plain", link=link,
            cloud_args=("--log-level", "WARNING"), deadline_ms=DEADLINE_MS,
            agent_args=AGENT_ARGS, agent_env=AGENT_ENV)))
        special = (SpecializingCloud(stack, bundle=args.bundle, dataset=args.dataset,
                                     work=work / "special", library=work / "library",
                                     deadline_ms=DEADLINE_MS, trainer=args.trainer, link=link)
                   if "cachenet_specialized" in systems else None)
        for system in systems:
            on = special.fleet if system == "cachenet_specialized" else fleet
            down0 = on.proxy.bytes_down
            runs, stats = run_system(on, system, xs, fulls)
            entry = {"overall": summary(runs, ys, fulls), "devices": [],
                     "wan_bytes_down": on.proxy.bytes_down - down0}
            for d, (run, s) in enumerate(zip(runs, stats, strict=True)):
                row = summary([run], [ys[d]], [fulls[d]]) | {
                    "pushes_applied": s["reloads"]["applied"],
                    "pushes_rejected": s["reloads"]["rejected"]}
                if system == "cachenet_specialized":
                    count, size = pushed_bytes(work / "special" / "store", s["agent_id"])
                    row |= {"versions_stored": count, "push_bytes": size,
                            "first_specialized": first_specialized(
                                run, traces[d][1], manifest.version)}
                entry["devices"].append(row)
            result["systems"][system] = entry
            o = entry["overall"]
            print(f"{system:>22}: mean {o['mean_ms']:.2f} ms, accuracy {o['accuracy']:.4f}, "
                  f"escalated {o['escalation_rate']:.3f}, edge agreement "
                  f"{o['edge_agreement'] if o['edge_agreement'] is not None else '-'}",
                  flush=True)
        if special is not None:
            result["specialization"] = special.finish(args.out)
    result["wall_s"] = round(time.monotonic() - started, 1)
    provenance.write(args.out / "context.json", result,
                     provenance.provenance("bench.context", argv))
    print(f"wrote {args.out / 'context.json'} in {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
