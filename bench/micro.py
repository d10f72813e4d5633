"""Microbenchmarks of the serving loop, each a ratio or difference taken in one run.

1. Agent overhead: p50 of a local-API round trip for an edge hit (ZeroMQ client
   -> agent -> ONNX Runtime -> gate -> reply) minus p50 of a bare ONNX Runtime
   run of the same model on the same input in this process. Target <= 150 us.
   Also the floor under it: the p50 round trip to a bare Python ZeroMQ echo
   process with the same messages, so the report can tell transport from
   the agent's own processing. Measured over loopback TCP and again over ipc
   (a Unix socket), which an application on the same device may use instead.
   And the in-process API (:class:`edge_agent.local.LocalAgent`, the same
   cascade without a socket): p50 of its edge answer minus bare ONNX Runtime,
   interleaved in one process. Target <= 30 us.
2. Cloud throughput under 32 concurrent clients (asyncio gRPC, batch-1
   requests) with dynamic batching (max_batch_size 32) against
   max_batch_size 1. Target >= 3x.

    python -m bench.micro [--bundle DIR] [--seconds 5] [--json] [--baseline DIR]

``--baseline DIR`` also runs the agent of another checkout (``git worktree add DIR
COMMIT``) against this one's, alternating, in the same run, for a before/after ratio.
The echo floor runs in its own session, as the agent does (see :data:`ECHO`), and the
servers run pinned to other CPUs than the client (:func:`pin_client`).

Without --bundle it builds or reuses the demo's digits bundle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import provenance
from cachenet.core.runtime import load_cache_model
from cachenet.sim.daemon import Process
from cachenet.sim.demo import ensure_bundle

#: Where a machine has two CPUs or more, the client (this process) runs on the first and
#: the server it measures (the agent, or the echo) on the others: left to the scheduler,
#: the same agent's round trip moved between ~110 and ~300 us from run to run on the
#: 2-core reference machine; pinned, it stays within ~10 us.
SERVER_CPUS: set[int] | None = None


def pin_client() -> set[int] | None:
    """Pin this process to CPU 0 and the servers it starts to the others (if any); the
    CPUs it had, to give back (:func:`unpin`)."""
    global SERVER_CPUS
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2 or not shutil.which("taskset"):
        return None
    os.sched_setaffinity(0, {cpus[0]})
    SERVER_CPUS = set(cpus[1:])
    return set(cpus)


def unpin(cpus: set[int] | None) -> None:
    """Back to every CPU: the throughput part measures the machine as a whole."""
    global SERVER_CPUS
    if cpus:
        os.sched_setaffinity(0, cpus)
    SERVER_CPUS = None


#: A bare ZeroMQ ROUTER that answers every request with a reply naming its id: the
#: transport's floor. It runs as the agent does (``Process``: its own session), because
#: Linux's autogroup scheduling gives every session its own group, and a process woken
#: across groups answers ~100 us later on the 2-core reference machine than one in its
#: caller's: a forked echo in the caller's session made the agent look that much slower.
ECHO = """
import json, sys, zmq
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind(sys.argv[1])
open(sys.argv[2], "w").write(json.dumps({"endpoint": sys.argv[1]}))
while True:
    frames = sock.recv_multipart(copy=False)
    rid = json.loads(frames[2].bytes)["id"]
    sock.send_multipart([frames[0], b"", json.dumps({"id": rid, "ok": True}).encode()])
"""


def endpoint_for(transport: str, work: Path, name: str) -> str:
    """A fresh local endpoint: ``tcp`` on loopback (a free port) or ``ipc`` in ``work``."""
    import socket

    if transport == "ipc":
        return f"ipc://{work / (name + '.sock')}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def zmq_floor_us(x: np.ndarray, n: int, endpoint: str, work: Path) -> float:
    """p50 of a round trip to a bare Python ZeroMQ echo process (:data:`ECHO`), with the
    client and messages the agent's round trips use: the transport's floor."""
    import subprocess

    from edge_agent.client import EdgeClient

    ready = work / f"echo-{time.monotonic_ns()}.ready"
    pin = ["taskset", "-c", ",".join(map(str, sorted(SERVER_CPUS)))] if SERVER_CPUS else []
    proc = subprocess.Popen([*pin, sys.executable, "-c", ECHO, endpoint, str(ready)],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the echo process did not start")
            time.sleep(0.02)
        with EdgeClient(endpoint) as client:
            samples = []
            for _ in range(n + 200):
                t0 = time.perf_counter_ns()
                client.call("infer", x[0], policy="edge")
                samples.append((time.perf_counter_ns() - t0) / 1e3)
    finally:
        proc.terminate()
        proc.wait(10)
    return float(np.median(samples[200:]))


def agent_overhead(bundle: Path, work: Path, n: int, transport: str = "tcp",
                   root: Path | None = None, floor: float | None = None
                   ) -> dict[str, float | str]:
    """The agent's overhead with its local API on ``transport``: ``tcp`` (loopback)
    or ``ipc`` (a Unix socket, for applications on the same device). ``root``: run the
    agent of another checkout (its code, this bundle); ``floor``: the echo floor already
    measured in this run."""
    from edge_agent.client import EdgeClient

    model = load_cache_model(bundle, threads=1)
    x = np.random.default_rng(0).random((1, *model.manifest.input["shape"][1:]),
                                        dtype=np.float32)
    sess, name = _bare_session(bundle, model)
    bind = "tcp://127.0.0.1:0" if transport == "tcp" else endpoint_for("ipc", work, "agent")
    edge = Process("edge_agent", ["--bundle", str(bundle), "--bind", bind,
                                  "--threads", "1", "--log-level", "WARNING"], work,
                   cwd=root, tag=f"-{time.monotonic_ns()}", cpus=SERVER_CPUS)
    try:
        endpoint = edge.wait_ready()["endpoint"]
        with EdgeClient(endpoint) as client:
            ort_us, rt_us = interleaved(sess, name, x, lambda: client.infer(x[0], policy="edge"),
                                        n)
    finally:
        edge.stop()
    ort_p50, rt_p50 = float(np.median(ort_us)), float(np.median(rt_us))
    if floor is None:
        floor = zmq_floor_us(x, n, endpoint_for(transport, work, "echo"), work)
    return {"transport": transport, "agent_code": str(root or "this checkout"),
            "bare_onnxruntime_p50_us": ort_p50,
            "local_api_edge_hit_p50_us": rt_p50,
            "overhead_p50_us": rt_p50 - ort_p50, "zmq_echo_floor_p50_us": floor,
            "agent_processing_p50_us": rt_p50 - ort_p50 - floor, "n": n, "target_us": 150.0}


def interleaved(sess: Any, name: str, x: np.ndarray, call: Any, n: int
                ) -> tuple[list[float], list[float]]:
    """Microseconds of a bare ONNX Runtime run and of ``call()``, ``n`` times each,
    interleaved so that both see the same machine state (after 200 warm-up rounds)."""
    for _ in range(200):
        sess.run(None, {name: x})
        call()
    ort_us, call_us = [], []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        sess.run(None, {name: x})
        t1 = time.perf_counter_ns()
        call()
        t2 = time.perf_counter_ns()
        ort_us.append((t1 - t0) / 1e3)
        call_us.append((t2 - t1) / 1e3)
    return ort_us, call_us


def _bare_session(bundle: Path, model) -> tuple[Any, str]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle / model.manifest.model_file()), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    return sess, sess.get_inputs()[0].name


def local_overhead(bundle: Path, n: int) -> dict[str, float]:
    """The in-process API's overhead on an edge answer, with the bundle's whole cascade
    (layer caches, label-shift gate, audit bookkeeping): p50 of ``LocalAgent.infer``
    minus p50 of a bare ONNX Runtime run, interleaved."""
    from edge_agent.local import LocalAgent

    model = load_cache_model(bundle, threads=1)
    x = np.random.default_rng(0).random((1, *model.manifest.input["shape"][1:]),
                                        dtype=np.float32)
    sess, name = _bare_session(bundle, model)
    with LocalAgent(bundle=bundle, threads=1, log_level="WARNING") as agent:
        ort_us, api_us = interleaved(sess, name, x, lambda: agent.infer(x[0], policy="edge"), n)
    ort_p50, api_p50 = float(np.median(ort_us)), float(np.median(api_us))
    return {"bare_onnxruntime_p50_us": ort_p50, "in_process_edge_answer_p50_us": api_p50,
            "overhead_p50_us": api_p50 - ort_p50, "n": n, "target_us": 30.0}


async def _load(target: str, x: np.ndarray, clients: int, seconds: float) -> dict[str, float]:
    from cachenet.protocol.client import AsyncCloudClient

    client = AsyncCloudClient(target)
    for _ in range(20):
        await client.infer(x, timeout=30)
    done = 0
    sizes: list[int] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            answer = await client.infer(x, timeout=30)
            done += 1
            sizes.append(answer.timings["batch_size"])

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    await client.close()
    return {"requests_per_s": done / elapsed, "requests": done,
            "mean_batch_size": float(np.mean(sizes)) if sizes else 0.0}


def cloud_throughput(bundle: Path, work: Path, clients: int, seconds: float) -> dict:
    model = load_cache_model(bundle)
    x = np.random.default_rng(0).random((1, *model.manifest.input["shape"][1:]),
                                        dtype=np.float32)
    out = {}
    for label, max_bs in (("batching", 32), ("no_batching", 1)):
        cloud = Process("cloud_server", ["--bundle", str(bundle), "--port", "0",
                                         "--max-batch-size", str(max_bs),
                                         "--log-level", "WARNING"], work)
        try:
            port = cloud.wait_ready()["port"]
            out[label] = asyncio.run(_load(f"127.0.0.1:{port}", x, clients, seconds))
        finally:
            cloud.stop()
    out["speedup"] = out["batching"]["requests_per_s"] / out["no_batching"]["requests_per_s"]
    out.update(clients=clients, seconds=seconds, target_speedup=3.0)
    return out


def compare_agents(bundle: Path, work: Path, n: int, baseline: Path, rounds: int = 2
                   ) -> dict[str, Any]:
    """This checkout's agent against ``baseline``'s (another checkout, e.g. ``git worktree
    add /tmp/base <commit>``), alternating, ``rounds`` times per transport, against one
    echo floor per transport: the agent's own processing of each, and their ratio."""
    out: dict[str, Any] = {"baseline": str(baseline)}
    for transport in ("tcp", "ipc"):
        model = load_cache_model(bundle, threads=1)
        x = np.random.default_rng(0).random((1, *model.manifest.input["shape"][1:]),
                                            dtype=np.float32)
        floor = zmq_floor_us(x, n, endpoint_for(transport, work, "echo"), work)
        own: dict[str, list[float]] = {"baseline": [], "current": []}
        for _ in range(rounds):
            for name, root in (("baseline", baseline), ("current", None)):
                r = agent_overhead(bundle, work, n, transport, root, floor)
                own[name].append(float(r["agent_processing_p50_us"]))
        med = {k: float(np.median(v)) for k, v in own.items()}
        out[transport] = {"floor_p50_us": floor, "rounds": own,
                          "baseline_processing_p50_us": med["baseline"],
                          "current_processing_p50_us": med["current"],
                          "ratio": med["current"] / med["baseline"]}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path)
    p.add_argument("--requests", type=int, default=3000, help="round trips for the overhead")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--baseline", type=Path,
                   help="another checkout (git worktree add DIR COMMIT): its agent's own "
                   "processing against this one's, alternating, in this run")
    p.add_argument("--no-throughput", action="store_true", help="skip the cloud's part")
    args = p.parse_args()
    provenance.start()
    from cachenet.toolchain.data import default_cache_dir

    bundle = args.bundle or ensure_bundle(default_cache_dir(), rebuild=False, progress=False)
    pinned = pin_client()
    with tempfile.TemporaryDirectory(prefix="cachenet-bench-") as tmp:
        overhead = agent_overhead(bundle, Path(tmp), args.requests)
        overhead_ipc = agent_overhead(bundle, Path(tmp), args.requests, "ipc")
        local = local_overhead(bundle, args.requests)
        compared = (compare_agents(bundle, Path(tmp), args.requests, args.baseline.resolve())
                    if args.baseline else None)
        unpin(pinned)
        throughput = (None if args.no_throughput
                      else cloud_throughput(bundle, Path(tmp), args.clients, args.seconds))
    print(f"bundle {bundle}")
    print(f"agent overhead (p50): {overhead['overhead_p50_us']:.1f} us = local API "
          f"{overhead['local_api_edge_hit_p50_us']:.1f} us - bare onnxruntime "
          f"{overhead['bare_onnxruntime_p50_us']:.1f} us (target <= 150 us)")
    print(f"  of which the transport floor (a bare Python ZeroMQ echo process, same "
          f"messages): {overhead['zmq_echo_floor_p50_us']:.1f} us; the agent's own "
          f"processing: {overhead['agent_processing_p50_us']:.1f} us")
    print(f"  over ipc (a Unix socket): {overhead_ipc['overhead_p50_us']:.1f} us, of which "
          f"the transport floor {overhead_ipc['zmq_echo_floor_p50_us']:.1f} us; the agent's "
          f"own processing: {overhead_ipc['agent_processing_p50_us']:.1f} us")
    print(f"in-process API (LocalAgent) overhead (p50): {local['overhead_p50_us']:.1f} us = "
          f"{local['in_process_edge_answer_p50_us']:.1f} us - bare onnxruntime "
          f"{local['bare_onnxruntime_p50_us']:.1f} us (target <= 30 us)")
    if compared is not None:
        for t in ("tcp", "ipc"):
            c = compared[t]
            print(f"agent's own processing over {t}, {args.baseline} -> this checkout "
                  f"(alternating, median of {len(c['rounds']['current'])} rounds each): "
                  f"{c['baseline_processing_p50_us']:.1f} -> "
                  f"{c['current_processing_p50_us']:.1f} us ({c['ratio']:.2f}x)")
    if throughput is not None:
        b, nb = throughput["batching"], throughput["no_batching"]
        print(f"cloud throughput, {args.clients} clients: {b['requests_per_s']:.0f} req/s "
              f"with dynamic batching (mean batch {b['mean_batch_size']:.1f}) vs "
              f"{nb['requests_per_s']:.0f} req/s at max_batch_size 1: "
              f"{throughput['speedup']:.2f}x (target >= 3x)")
    if args.json:
        print(json.dumps({"provenance": provenance.provenance("bench.micro"),
                          "agent_overhead": overhead, "agent_overhead_ipc": overhead_ipc,
                          "in_process": local, "compared": compared,
                          "cloud_throughput": throughput}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
