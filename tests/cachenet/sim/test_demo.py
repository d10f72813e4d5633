"""``cachenet demo`` end to end: real processes, the WAN proxy, cleanup."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from cachenet.sim.stream import class_run_stream


def test_class_run_stream_has_temporal_locality():
    labels = np.repeat(np.arange(10), 30)
    idx = class_run_stream(labels, 2000, mean_run=20, seed=0)
    runs = 1 + int(np.count_nonzero(np.diff(labels[idx])))
    assert 2000 / runs > 10  # mean run far above the 1.1 of an i.i.d. stream
    assert np.array_equal(idx, class_run_stream(labels, 2000, mean_run=20, seed=0))
    mixed = class_run_stream(labels, 2000, mean_run=50, active=3, seed=1)
    assert len(np.unique(labels[mixed][:40])) <= 3


def children_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_demo_json_and_cleanup(cli_cache):
    env = {**os.environ, "CACHENET_CACHE_DIR": str(cli_cache)}
    proc = subprocess.run([sys.executable, "-m", "cachenet", "demo", "--requests", "60",
                           "--rtt-ms", "30", "--json"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for system in ("edge_only", "cloud_only", "cachenet"):
        assert {"accuracy", "mean_ms", "p50_ms", "p99_ms", "escalation_rate"} <= set(
            result[system])
    assert result["edge_only"]["escalation_rate"] == 0.0
    assert result["cloud_only"]["escalation_rate"] == 1.0
    assert result["cloud_only"]["fallbacks"] == 0
    assert result["cloud_only"]["p50_ms"] >= 30.0  # every answer crossed the emulated WAN
    assert result["cachenet"]["mean_ms"] < result["cloud_only"]["mean_ms"]
    assert "cachenet mean latency" in proc.stdout


@pytest.mark.slow
def test_interrupted_demo_stops_its_processes(cli_cache):
    env = {**os.environ, "CACHENET_CACHE_DIR": str(cli_cache)}
    demo = subprocess.Popen([sys.executable, "-m", "cachenet", "demo", "--requests", "5000",
                             "--rtt-ms", "40"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    # Wait until both daemons are up (two python children), then interrupt.
    while time.monotonic() < deadline:
        kids = [p for p in children_of(demo.pid) if "python" in p.name()]
        if len(kids) >= 2 and all(p.status() != psutil.STATUS_ZOMBIE for p in kids):
            break
        assert demo.poll() is None, demo.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    else:
        pytest.fail("the demo's daemons never started")
    demo.send_signal(signal.SIGINT)
    demo.wait(60)
    _, alive = psutil.wait_procs(kids, timeout=30)
    assert not alive, f"left running: {alive}"
    assert demo.returncode == 130


@pytest.mark.slow
def test_drift_demo_specialises_each_phase_and_loses_nothing(cli_cache):
    env = {**os.environ, "CACHENET_CACHE_DIR": str(cli_cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cachenet", "demo", "--scenario", "drift",
                           "--after", "150", "--json"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failed_requests"] == 0
    assert result["pushes_rejected"] == 0 and result["pushes_applied"] >= len(result["phases"])
    for phase in result["phases"]:
        assert phase["specialised_after_s"] is not None, phase
        assert phase["requests_after"] == 150
        assert phase["escalation_rate_after"] < phase["escalation_rate_before"], phase
