"""The benchmark suite: systems compared on the same traces, through the emulated WAN.

One cloud server and one edge agent run as processes on loopback with the WAN
proxy between them. For each network profile the proxy is reconfigured; for
each trace every system streams the same requests through the agent's ZeroMQ
API, one at a time, as an application would:

* ``edge_only``: the agent answers everything itself;
* ``cloud_only``: everything goes to the cloud;
* ``fixed_threshold``: a fixed threshold of 0.5 on 1 - normalised entropy (the
  default of KubeEdge Sedna's CrossEntropy hard-example filter);
* ``cachenet``: the general cache model with its calibrated gate, and everything a
  device adds to it: the stream's class prior, the online audit (a fresh agent
  per run, so each run starts from the bundle as shipped), the bundle's layer
  caches if it has them;
* ``cachenet_specialized``: cachenet with specialisation and model push, live:
  a specialising cloud and a fresh agent for each run (:mod:`bench.specializing`);
* ``oracle``: the same cache models as ``cachenet_specialized`` (a fresh agent of
  the specialising cloud), escalating exactly where the active model disagrees
  with the full model: the latency floor for those models at full-model agreement;
* ``cachenet_layercache`` (with ``--layered-bundle``, a bundle from ``cachenet
  layercache``): cachenet with layer caches on the edge and in the cloud, a fresh
  agent for each run (:mod:`bench.layered`).

Results go to ``bench/results/``: ``summary.json`` (one row per stream, network
and system), ``report.md``, PNG plots, and the traces as ``traces/*.npz``.

    python -m bench.suite --bundle bundles/cifar [--quick]

The data set is ``../shared/data/cifar10-jpg.zip`` unless ``--dataset`` says
otherwise; without it the suite says so and exits.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench import provenance
from bench.layered import AGENT_ARGS, AGENT_ENV, layered_fleet
from bench.provenance import ROOT
from bench.specializing import SpecializingCloud, oracle_answer, pushes
from bench.traces import TRACES, confusable_classes, make_trace, save_trace, trace_inputs
from cachenet.sim.fleet import Fleet, FleetConfig
from cachenet.sim.wan import LinkProfile

NETWORKS: dict[str, LinkProfile] = {
    "lan": LinkProfile.from_rtt(2.0),
    "wifi": LinkProfile.from_rtt(20.0, bandwidth_kbps=50_000),
    "4g": LinkProfile.from_rtt(50.0, bandwidth_kbps=10_000),
    "congested": LinkProfile(delay_ms=50.0, bandwidth_kbps=5_000, stall_rate=0.01,
                             stall_ms=200.0, seed=0),
}
SYSTEMS = ("edge_only", "cloud_only", "fixed_threshold", "cachenet", "cachenet_specialized",
           "oracle")
#: Systems run on the specialising cloud, each on a fresh agent of its own.
SPECIALIZING = ("cachenet_specialized", "oracle")
LAYERED = "cachenet_layercache"
FIXED_GATE = {"score": "entropy", "threshold": 0.5}
DEADLINE_MS = 2000


def request_options(system: str) -> dict[str, Any]:
    if system == "edge_only":
        return {"policy": "edge"}
    if system == "cloud_only":
        return {"policy": "cloud"}
    if system == "fixed_threshold":
        return {"policy": "auto", "gate": FIXED_GATE}
    return {"policy": "auto"}


def run_system(client: Any, x: np.ndarray, system: str, full_lab: np.ndarray,
               timeout: float) -> dict[str, Any]:
    labels, lat, sources, by, versions, server = [], [], [], [], [], []
    options = request_options(system)
    for i in range(len(x)):
        if system == "oracle":
            answer, ms = oracle_answer(client, x[i], int(full_lab[i]), timeout)
        else:
            t0 = time.perf_counter()
            answer = client.infer(x[i], timeout=timeout, **options)
            ms = (time.perf_counter() - t0) * 1e3
        lat.append(ms)
        labels.append(answer["label"])
        sources.append(answer["source"])
        by.append(answer.get("answered_by", ""))
        versions.append((answer.get("versions") or {}).get("cache", ""))
        if answer.get("source") == "cloud":  # the cloud's own time for it, queue included
            server.append(answer["latency_us"].get("cloud_server", 0.0) / 1e3)
    return {"labels": np.asarray(labels), "latencies_ms": np.asarray(lat),
            "sources": np.asarray(sources), "answered_by": np.asarray(by),
            "versions": versions, "cloud_server_ms": server}


def recovery(escalated: np.ndarray, y: np.ndarray, window: int = 10, level: float = 0.2
             ) -> dict[str, Any]:
    """After each class change of the trace, the requests until the escalation rate over
    the next ``window`` falls to ``level``: the median over the runs long enough to tell
    (``window`` requests or more), a run that never got there counting as longer than
    any (so the median is None when most never did), and how many never did."""
    changes = [0, *np.flatnonzero(np.diff(y) != 0) + 1, len(y)]
    waits, censored = [], 0
    for start, end in itertools.pairwise(changes):
        if end - start < window:
            continue
        wait = next((j for j in range(end - start - window + 1)
                     if escalated[start + j:start + j + window].mean() <= level), None)
        if wait is None:
            censored += 1
        waits.append(math.inf if wait is None else float(wait))
    median = float(np.median(waits)) if waits else math.inf
    return {"recovery_requests_median": median if math.isfinite(median) else None,
            "recovery_censored": censored, "class_changes": len(waits)}


def first_push(run: dict[str, Any]) -> dict[str, Any]:
    """The first request a pushed model answered, and the client's time until it (the
    run starts on a new stream: its first request is the change)."""
    versions = run["versions"]
    at = next((i for i, v in enumerate(versions) if v and v != versions[0]), None)
    if at is None:
        return {"first_push_request": None, "first_push_s": None}
    return {"first_push_request": at,
            "first_push_s": float(np.sum(run["latencies_ms"][:at]) / 1e3)}


def measure(client: Any, proc: Any, proxy: Any, x: np.ndarray, system: str,
            full_lab: np.ndarray) -> tuple[dict[str, Any], int, int, float]:
    """One system's run: (run, bytes up, bytes down across the WAN, agent CPU seconds)."""
    up0, down0 = proxy.bytes_up, proxy.bytes_down
    cpu0 = sum(proc.cpu_times()[:2])
    run = run_system(client, x, system, full_lab, timeout=30)
    return (run, proxy.bytes_up - up0, proxy.bytes_down - down0,
            sum(proc.cpu_times()[:2]) - cpu0)


def row(stream: str, network: str, system: str, run: dict[str, Any], y: np.ndarray,
        full_lab: np.ndarray, bytes_up: int, bytes_down: int, cpu_s: float) -> dict[str, Any]:
    lat, src, n = run["latencies_ms"], run["sources"], len(y)
    edge = src == "edge"  # answered on the device (fallbacks apart): what the promise covers
    wrong = int((run["labels"][edge] != full_lab[edge]).sum())
    return {"stream": stream, "network": network, "system": system, "n": n,
            "accuracy": float((run["labels"] == y).mean()),
            "agreement": float((run["labels"] == full_lab).mean()),
            "edge_answers": int(edge.sum()), "edge_disagreements": wrong,
            "edge_agreement": (1.0 - wrong / int(edge.sum())) if edge.any() else None,
            "mean_ms": float(lat.mean()), "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99)),
            "escalation_rate": float((src != "edge").mean()),
            "fallbacks": int((src == "edge-fallback").sum()),
            **recovery(src != "edge", y),
            "cloud_server_ms_mean": (float(np.mean(run["cloud_server_ms"]))
                                     if run.get("cloud_server_ms") else None),
            "bytes_up": bytes_up, "bytes_down": bytes_down,
            "edge_cpu_ms_per_request": 1e3 * cpu_s / n}


def audit_figures(stats: dict[str, Any], n: int) -> dict[str, Any]:
    """A fresh agent's audit at the end of its run, and the share of its requests each
    cascade step answered at the edge (``step_<name>``)."""
    audit = stats.get("audit") or {}
    steps = (stats.get("stats") or {}).get("edge_steps") or {}
    return {"audited": audit.get("audited", 0), "audit_agreement": audit.get("agreement"),
            "audit_bound": audit.get("agreement_bound"),
            **{f"step_{k}": v / n for k, v in sorted(steps.items())}}


def labels_for(bundle: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(general cache model's logits, full model's labels) on ``x``, as agent and cloud
    compute them."""
    from cachenet.core.runtime import load_cache_model
    from cachenet.toolchain.train import predict_logits
    from cloud_server.model import load_full_model

    full, _ = load_full_model(bundle, device="cpu")
    return load_cache_model(bundle).logits(x), predict_logits(full, x).argmax(1)


def warm_up(client: Any, like: np.ndarray) -> None:
    """A fresh agent's connections and sessions, on blank inputs: not the trace's, so that
    its prior gets no head start."""
    blank = np.zeros_like(like)
    for _ in range(5):
        client.infer(blank, policy="cloud", timeout=10)


def wait_audits(client: Any, timeout: float = 30.0) -> None:
    """Until the agent's audits in flight are back (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while (client.stats().get("audit") or {}).get("inflight") and time.monotonic() < deadline:
        time.sleep(0.05)


def run_suite(*, bundle: Path, dataset: str, out: Path, traces: tuple[str, ...],
              networks: tuple[str, ...], requests: int, seed: int, micro: dict | None,
              library: Path, layered_bundle: Path | None = None,
              specialize: bool = True) -> dict[str, Any]:
    from cachenet.core.bundle import verify_bundle
    from cachenet.toolchain.data import load_bundle_splits

    manifest = verify_bundle(bundle)
    splits = load_bundle_splits(dataset, manifest.data["dataset"])
    rows: list[dict[str, Any]] = []
    latencies: dict[str, dict[str, list[float]]] = {}
    offline: dict[str, Any] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="cachenet-suite-") as tmp:
        work = Path(tmp)
        # First, so that labelling its replay data does not overlap any measurement.
        specializing = (SpecializingCloud(stack, bundle=bundle, dataset=dataset, work=work,
                                          library=library, deadline_ms=DEADLINE_MS)
                        if specialize else None)
        layered = (stack.enter_context(layered_fleet(layered_bundle, work, DEADLINE_MS))
                   if layered_bundle else None)
        systems = tuple(s for s in SYSTEMS if specialize or s != "cachenet_specialized")
        systems += (LAYERED,) if layered else ()
        fleet = stack.enter_context(Fleet(FleetConfig(
            bundle, workdir=work, cloud_args=("--log-level", "WARNING"),
            deadline_ms=DEADLINE_MS, agent_args=AGENT_ARGS, agent_env=AGENT_ENV)))
        proxy = fleet.proxy
        client = stack.enter_context(fleet.agents[0].client())
        agent_proc = fleet.agents[0].psutil()
        # Every WAN of the run (each cloud has its own), set to the same network.
        fleets = [fleet, *([specializing.fleet] if specializing else []),
                  *([layered] if layered else [])]
        confusable = None
        if "confusable" in traces:  # chosen on the calibration split, not the test split
            confusable = confusable_classes(*labels_for(bundle, splits.calib.x))
        for name in traces:
            idx = make_trace(name, splits.test.y, requests, seed=seed, classes=confusable)
            save_trace(out / "traces" / f"{name}.npz", name, idx, splits.test.y, seed)
            x, y = trace_inputs(name, splits.test.x, idx, seed), splits.test.y[idx]
            cache_logits, full_lab = labels_for(bundle, x)
            offline[name] = {"cache_logits": cache_logits, "full_labels": full_lab, "y": y}
            for net in networks:
                for f in fleets:
                    f.configure(NETWORKS[net])
                for i in range(5):  # warm-up: connections, sessions
                    client.infer(x[i], policy="cloud", timeout=10)
                for system in systems:
                    extra: dict[str, Any] = {}
                    if system == LAYERED:
                        with layered.agent(f"{system}-{name}-{net}") as agent, \
                                agent.client() as own:
                            proc = agent.psutil()
                            warm_up(own, x[0])
                            run, up, down, cpu = measure(own, proc, layered.proxy, x, system,
                                                         full_lab)
                            wait_audits(own)
                            stats = own.stats()
                        # answered by a layer cache: "<site>:<kind>"
                        extra = {"layer_hits": float(np.mean([":" in b for b in
                                                              run["answered_by"]]))}
                        extra |= audit_figures(stats, len(x))
                    elif system in SPECIALIZING and specializing is not None:
                        with specializing.agent(f"{system}-{name}-{net}") as agent, \
                                agent.client() as own:
                            proc = agent.psutil()
                            warm_up(own, x[0])
                            run, up, down, cpu = measure(own, proc, specializing.fleet.proxy, x,
                                                         system, full_lab)
                            wait_audits(own)
                            stats = own.stats()
                            extra = (pushes(stats) | audit_figures(stats, len(x))
                                     | first_push(run))
                    elif system in ("cachenet", "oracle"):  # a fresh agent: the run's prior, audit
                        with fleet.agent(f"{system}-{name}-{net}") as agent, \
                                agent.client() as own:
                            proc = agent.psutil()
                            warm_up(own, x[0])
                            run, up, down, cpu = measure(own, proc, proxy, x, system, full_lab)
                            wait_audits(own)
                            extra = audit_figures(own.stats(), len(x))
                    else:
                        run, up, down, cpu = measure(client, agent_proc, proxy, x, system,
                                                     full_lab)
                    rows.append(row(name, net, system, run, y, full_lab, up, down, cpu) | extra)
                    latencies.setdefault(f"{name}/{net}", {})[system] = (
                        run["latencies_ms"].tolist())
                    print(f"{name:>9} {net:>9} {system:>20}: mean "
                          f"{rows[-1]['mean_ms']:8.2f} ms, accuracy {rows[-1]['accuracy']:.4f},"
                          f" escalated {rows[-1]['escalation_rate']:.3f}"
                          + "".join(f", {k.replace('_', ' ')} {v:.3g}" for k, v in extra.items()
                                    if k in ("pushes_applied", "layer_hits", "audited",
                                             "audit_bound") and v is not None),
                          flush=True)
        specialization = specializing.finish(out) if specializing is not None else None
    return {"rows": rows, "latencies": latencies, "offline": offline, "micro": micro,
            "confusable_classes": None if confusable is None else confusable.tolist(),
            "specialization": specialization,
            "gate_score": manifest.gate["score"], "bundle": str(bundle), "dataset": dataset,
            "requests": requests, "seed": seed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--dataset", default=str(ROOT.parent / "shared/data/cifar10-jpg.zip"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--quick", action="store_true",
                   help="runs50 and iid, lan and 4g, 150 requests (<= 3 minutes)")
    p.add_argument("--requests", type=int, help="requests per trace (default 300; quick 150)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-micro", action="store_true", help="skip the microbenchmarks")
    p.add_argument("--traces", help=f"comma-separated, of {', '.join(TRACES)} (default: all)")
    p.add_argument("--networks", help=f"comma-separated, of {', '.join(NETWORKS)}")
    p.add_argument("--layered-bundle", type=Path,
                   help="a bundle with layer caches (cachenet layercache): adds the system "
                        "cachenet_layercache")
    p.add_argument("--no-specialize", action="store_true",
                   help="no specialising cloud (it labels its replay data with the full model "
                        "first: minutes for a large one); the oracle runs on the plain cloud")
    p.add_argument("--library", type=Path,
                   help="the specialising cloud's partition-model library, kept between "
                        "runs (default: under the cache directory, per bundle version)")
    args = p.parse_args(argv)
    provenance.start()
    if args.dataset != "digits" and not Path(args.dataset).exists():
        print(f"skipped: data set {args.dataset} not found (the suite needs CIFAR-10 from "
              "../shared/data, or --dataset)", file=sys.stderr)
        return 0
    from bench.report import write_outputs

    started = time.monotonic()
    traces = ("runs50", "iid") if args.quick else TRACES
    networks = ("lan", "4g") if args.quick else tuple(NETWORKS)
    if args.traces:
        traces = tuple(t for t in args.traces.split(",") if t)
    if args.networks:
        networks = tuple(n for n in args.networks.split(",") if n)
    requests = args.requests or (150 if args.quick else 300)
    micro = None
    if not args.no_micro:
        from bench.micro import agent_overhead, cloud_throughput, local_overhead

        with tempfile.TemporaryDirectory(prefix="cachenet-micro-") as tmp:
            n = 1000 if args.quick else 3000
            micro = {"agent_overhead": agent_overhead(args.bundle, Path(tmp), n),
                     "agent_overhead_ipc": agent_overhead(args.bundle, Path(tmp), n, "ipc"),
                     "in_process": local_overhead(args.bundle, n),
                     "cloud_throughput": cloud_throughput(args.bundle, Path(tmp), 32,
                                                          3.0 if args.quick else 5.0)}
    from cachenet.core.bundle import verify_bundle
    from cachenet.toolchain.data import default_cache_dir

    library = args.library or (default_cache_dir() / "library"
                               / verify_bundle(args.bundle).version)
    result = run_suite(bundle=args.bundle, dataset=args.dataset, out=args.out, traces=traces,
                       networks=networks, requests=requests, seed=args.seed, micro=micro,
                       library=library, layered_bundle=args.layered_bundle,
                       specialize=not args.no_specialize)
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["provenance"] = provenance.provenance("bench.suite", argv)
    write_outputs(result, args.out, quick=args.quick)
    print(f"wrote {args.out} in {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
