"""What the Open Inference Protocol front end and the metrics cost, as ratios taken in one run.

Two cloud processes serve the same bundle, one with ``--metrics-port`` and one without.
``--clients`` asyncio clients send batch-1 requests for ``--seconds`` per round; rounds
alternate, so drifts of the machine fall on both sides alike:

* ``cachenet.v1`` against the OIP front end (``ModelInfer``), on the cloud without
  metrics: throughput and latency percentiles, and OIP's throughput over v1's;
* ``cachenet.v1`` on the cloud with metrics against the one without: what observing every
  request into histograms costs.

    python -m bench.protocols --bundle bundles/digits [--seconds 5] [--rounds 3]

Results: ``bench/results/protocols.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import provenance
from bench.provenance import ROOT
from cachenet.protocol.client import AsyncCloudClient
from cachenet.protocol.openinference import AsyncOIPClient
from cachenet.sim.daemon import Process
from cachenet.toolchain.data import load_splits


async def drive(make, x: np.ndarray, clients: int, seconds: float) -> dict:
    """``clients`` loops of one request after another for ``seconds``: rate, latencies."""
    client = make()
    latencies: list[float] = []
    errors = [0]
    stop = time.perf_counter() + seconds

    async def loop(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                await client.infer(x[i % len(x)][None], timeout=10)
                latencies.append(time.perf_counter() - t0)
            except Exception:
                errors[0] += 1
            i += clients

    started = time.perf_counter()
    await asyncio.gather(*(loop(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    await client.close()
    lat = np.array(latencies) * 1e6
    return {"requests": len(latencies), "errors": errors[0],
            "rate": len(latencies) / elapsed,
            "p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99))}


def summarise(rows: list[dict]) -> dict:
    return {"requests": sum(r["requests"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            "rate": float(np.median([r["rate"] for r in rows])),
            "p50_us": float(np.median([r["p50_us"] for r in rows])),
            "p99_us": float(np.median([r["p99_us"] for r in rows]))}


async def run(args: argparse.Namespace, plain: str, metered: str, model: str) -> dict:
    x = load_splits(args.dataset).test.x[:256].astype(np.float32)
    sides = {"v1": lambda: AsyncCloudClient(plain),
             "oip": lambda: AsyncOIPClient(plain, model),
             "v1_metrics": lambda: AsyncCloudClient(metered)}
    for make in sides.values():  # warm-up: connections, first batches
        await drive(make, x, args.clients, 1.0)
    rows: dict[str, list[dict]] = {k: [] for k in sides}
    for _ in range(args.rounds):
        for name, make in sides.items():
            rows[name].append(await drive(make, x, args.clients, args.seconds))
    out = {k: summarise(v) for k, v in rows.items()}
    out["oip_over_v1_rate"] = out["oip"]["rate"] / out["v1"]["rate"]
    out["metrics_over_plain_rate"] = out["v1_metrics"]["rate"] / out["v1"]["rate"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "protocols.json")
    args = ap.parse_args(argv)
    provenance.start()
    tmp = Path(tempfile.mkdtemp(prefix="protocols-"))
    clouds = [Process("cloud_server", ["--bundle", str(args.bundle), "--port", "0", *extra],
                      tmp, tag=tag)
              for tag, extra in (("-plain", []), ("-metrics", ["--metrics-port", "0"]))]
    try:
        for c in clouds:
            c.wait_ready(120)
        from cachenet.protocol.client import CloudClient

        plain, metered = (f"127.0.0.1:{c.info['port']}" for c in clouds)
        with CloudClient(plain) as c:
            model = c.model_info(timeout=10).name
        result = asyncio.run(run(args, plain, metered, model))
    finally:
        for c in clouds:
            c.stop()
    result = {"clients": args.clients, "seconds_per_round": args.seconds,
              "rounds": args.rounds, **result}
    result = provenance.write(args.out, result, provenance.provenance("bench.protocols", argv))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
