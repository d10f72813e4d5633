"""A soak through mutual TLS: an agent escalating to the cloud for ``--minutes`` while the
cloud pushes it a newly signed bundle every ``--push-every`` seconds; the memory (RSS) of
both daemons sampled every 5 s.

Both links are mutual TLS (``cachenet certs``), bundles are signed (``cachenet keys``)
and the agent pins the key. Reported: requests, answers by source, failures, pushes
applied, and each daemon's RSS after the warm-up (the first ``--warmup`` seconds)
against its largest and smallest later value.

    python -m bench.soak --bundle bundles/digits [--minutes 10]

Results: ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import provenance
from bench.provenance import ROOT
from cachenet.core.bundle import repack
from cachenet.core.signing import generate_keys
from cachenet.protocol.tls import make_fleet_certs
from cachenet.sim.fleet import Fleet, FleetConfig
from cachenet.sim.load import Load
from cachenet.toolchain.data import load_splits


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=60.0)
    ap.add_argument("--push-every", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = ap.parse_args(argv)
    provenance.start()
    x = load_splits(args.dataset).test.x
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    make_fleet_certs(tmp / "certs", ["cam-soak"], ["localhost", "127.0.0.1"])
    private, public = generate_keys(tmp / "keys")
    c = tmp / "certs"
    store = tmp / "store"
    agent_bundle = tmp / "agent-bundle"
    # No WAN: both links are mutual TLS straight to the cloud. The agent starts once the
    # store holds a bundle (push(0) below).
    config = FleetConfig(
        args.bundle, agents=0, link=None, workdir=tmp, agent_bundle=agent_bundle,
        deadline_ms=2000, cloud_args=(
            "--store", str(store), "--signing-key", str(private), "--tls-ca", str(c / "ca.pem"),
            "--tls-cert", str(c / "cloud.pem"), "--tls-key", str(c / "cloud.key")),
        agent_args=("--trusted-key", str(public), "--spool-dir", str(tmp / "spool"),
                    "--tls-ca", str(c / "ca.pem"), "--tls-cert", str(c / "agent-cam-soak.pem"),
                    "--tls-key", str(c / "agent-cam-soak.key")))

    def push(n: int) -> None:
        b = repack(args.bundle, tmp / f"b{n}", fields={"name": f"soak-{n}"})  # a new version
        subprocess.run([sys.executable, "-m", "cachenet", "models", "--store", str(store),
                        "push", str(b.root), "--signing-key", str(private)], check=True,
                       capture_output=True)

    with Fleet(config) as fleet:
        push(0)
        repack(args.bundle, agent_bundle)
        subprocess.run([sys.executable, "-m", "cachenet", "sign", str(agent_bundle), "--key",
                        str(private)], check=True, capture_output=True)
        agent = fleet.start_agent("cam-soak")
        assert fleet.cloud is not None
        procs = {"cloud": psutil.Process(fleet.cloud.proc.pid), "agent": agent.psutil()}
        samples: dict[str, list[tuple[float, int]]] = {k: [] for k in procs}
        pushes, next_push = 0, args.push_every
        started = time.monotonic()
        with Load(agent.endpoint, x, cloud_every=3) as load:
            while (elapsed := time.monotonic() - started) < args.minutes * 60:
                for k, p in procs.items():
                    samples[k].append((round(elapsed, 1), p.memory_info().rss))
                if elapsed >= next_push:
                    pushes += 1
                    push(pushes)
                    next_push += args.push_every
                time.sleep(5)
            stats = agent.stats()
    memory = {}
    for k, rows in samples.items():
        after = [rss for t, rss in rows if t >= args.warmup]
        base = after[0]
        memory[k] = {"rss_after_warmup_mb": round(base / 2**20, 1),
                     "rss_max_mb": round(max(after) / 2**20, 1),
                     "rss_min_mb": round(min(after) / 2**20, 1),
                     "max_change_vs_warmup": round(max(abs(r - base) for r in after) / base, 4),
                     "samples": [(t, round(r / 2**20, 1)) for t, r in rows]}
    out = {"minutes": args.minutes,
           "requests": load.sent, "sources": dict(load.sources),
           "failed": load.failed, "pushes_stored": pushes + 1,
           "pushes_applied": (stats.get("control") or {}).get("applied"),
           "pushes_rejected": (stats.get("control") or {}).get("rejected"),
           "model_version": stats["model"]["version"], "control": stats.get("control"),
           "memory": memory}
    out = provenance.write(args.out, out, provenance.provenance("bench.soak", argv))
    summary = {k: v for k, v in out.items() if k != "memory"}
    summary["memory"] = {k: {kk: vv for kk, vv in v.items() if kk != "samples"}
                         for k, v in memory.items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
