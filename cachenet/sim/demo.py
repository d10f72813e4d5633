"""``cachenet demo``: the whole system on one machine, compared with edge-only and cloud-only.

Builds (or reuses) a bundle on the embedded digits, starts ``cloud_server`` and
``edge_agent`` as separate processes on loopback with the emulated WAN between
them, streams a workload with temporal locality through the ZeroMQ client
three times (the agent told to answer at the edge only, to send everything to
the cloud, and to gate as cachenet does), and reports accuracy, agreement with
the full model, latency as the client sees it, and the escalation rate. Every
process it starts is stopped on the way out, interrupted or not.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cachenet.exceptions import CachenetError
from cachenet.sim.fleet import Fleet, FleetConfig

log = logging.getLogger(__name__)

SYSTEMS = {"edge_only": "edge", "cloud_only": "cloud", "cachenet": "auto"}


@dataclass
class RunResult:
    labels: np.ndarray
    latencies_ms: np.ndarray
    sources: list[str]

    def summary(self, y: np.ndarray, full: np.ndarray, known: np.ndarray) -> dict[str, float]:
        """Figures against labels ``y`` and the full model's answers ``full`` (where ``known``)."""
        lat = self.latencies_ms
        sources = np.asarray(self.sources)
        return {"accuracy": float((self.labels == y).mean()),
                "agreement": float((self.labels == full)[known].mean()) if known.any()
                else None,
                "mean_ms": float(lat.mean()), "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "escalation_rate": float(np.isin(sources, ["cloud", "edge-fallback"]).mean()
                                         if len(sources) else 0.0),
                "cloud_answers": int((sources == "cloud").sum()),
                "fallbacks": int((sources == "edge-fallback").sum())}


def run_stream(endpoint: str, x: np.ndarray, *, policy: str, timeout: float) -> RunResult:
    from edge_agent.client import EdgeClient

    labels, lat, sources = [], [], []
    with EdgeClient(endpoint) as client:
        for i in range(min(5, len(x))):  # warm-up: connections, sessions
            client.infer(x[i], policy=policy, timeout=timeout)
        for xi in x:
            t0 = time.perf_counter()
            answer = client.infer(xi, policy=policy, timeout=timeout)
            lat.append((time.perf_counter() - t0) * 1e3)
            labels.append(answer["label"])
            sources.append(answer["source"])
    return RunResult(np.asarray(labels), np.asarray(lat), sources)


def ensure_bundle(cache_dir: Path, *, rebuild: bool, progress: bool) -> Path:
    from cachenet.core.bundle import verify_bundle

    out = cache_dir / "demo" / "digits"
    if not rebuild:
        try:
            verify_bundle(out)
            return out
        except CachenetError:
            pass
    from cachenet.toolchain.build import build

    log.info("building the demo bundle at %s", out)
    build(dataset="digits", out=out, cache_dir=cache_dir, progress=progress)
    return out


def format_table(results: dict[str, dict[str, float]], rtt_ms: float, n: int) -> str:
    cols = ["accuracy", "agreement", "mean_ms", "p50_ms", "p99_ms", "escalation_rate"]
    lines = [f"cachenet demo: {n} requests, digits stream with class runs, "
             f"emulated WAN {rtt_ms:g} ms RTT",
             f"  {'system':<11}" + "".join(f"{c:>16}" for c in cols)]
    for name in SYSTEMS:
        row = results[name]
        lines.append(f"  {name:<11}" + "".join(
            f"{'n/a':>16}" if row[c] is None
            else f"{row[c]:>16.4f}" if c in ("accuracy", "agreement", "escalation_rate")
            else f"{row[c]:>16.2f}" for c in cols))
    c, o = results["cachenet"], results["cloud_only"]
    lines.append(f"  cachenet mean latency = {c['mean_ms'] / o['mean_ms']:.3f} x cloud-only; "
                 f"accuracy {100 * (c['accuracy'] - o['accuracy']):+.2f} points vs cloud-only")
    return "\n".join(lines)


def digits_bundle(bundle: Path) -> Path:
    """``bundle`` if it is a verified bundle for the embedded digits (the demos' stream)."""
    from cachenet.core.bundle import verify_bundle

    m = verify_bundle(bundle)
    if m.input["shape"][1:] != [1, 8, 8] or len(m.classes) != 10:
        raise CachenetError(f"bundle {bundle} takes {m.input['shape'][1:]} inputs in "
                            f"{len(m.classes)} classes; the demos stream the embedded digits "
                            "(1 x 8 x 8, 10 classes)")
    return bundle


def run_demo(*, rtt_ms: float = 40.0, requests: int = 400, mean_run: float = 20.0,
             seed: int = 0, cache_dir: Path | None = None, rebuild: bool = False,
             deadline_ms: float | None = None, progress: bool = False,
             bundle: Path | None = None) -> dict[str, Any]:
    """Run the demo; returns the results keyed by system (see module docstring). With
    ``bundle`` (a digits bundle), the demo runs it instead of building its own."""
    from cachenet.sim.stream import class_run_stream
    from cachenet.sim.wan import LinkProfile
    from cachenet.toolchain.data import default_cache_dir, load_splits

    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    started = time.monotonic()
    bundle = (digits_bundle(bundle) if bundle is not None
              else ensure_bundle(cache_dir, rebuild=rebuild, progress=progress))
    splits = load_splits("digits", seed=0)
    idx = class_run_stream(splits.test.y, requests, mean_run=mean_run, seed=seed)
    x, y = splits.test.x[idx], splits.test.y[idx]
    deadline = deadline_ms if deadline_ms is not None else max(250.0, 4 * rtt_ms)
    config = FleetConfig(bundle, link=LinkProfile.from_rtt(rtt_ms), deadline_ms=deadline)
    with Fleet(config) as fleet:
        runs = {name: run_stream(fleet.agents[0].endpoint, x, policy=policy,
                                 timeout=deadline / 1e3 + 5)
                for name, policy in SYSTEMS.items()}
    # The full model's answers: the cloud-only run, where the cloud did answer.
    full = runs["cloud_only"].labels
    known = np.asarray(runs["cloud_only"].sources) == "cloud"
    results: dict[str, Any] = {name: r.summary(y, full, known) for name, r in runs.items()}
    results.update(rtt_ms=rtt_ms, requests=requests, bundle=str(bundle),
                   wall_s=round(time.monotonic() - started, 2))
    return results


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so the demo's cleanup runs either way."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
