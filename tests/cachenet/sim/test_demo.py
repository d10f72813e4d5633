"""``cachenet demo`` end to end: real processes, the WAN proxy, cleanup.

The figures asserted are the ones the code guarantees: the demo runs the session's
digits bundle, whose gate answers half of its calibration inputs, so which requests
the edge answers follows from that gate alone; the drift scenario has the cloud make
its partition models with the ``oracle`` trainer, whose answers are the full model's
by construction. None of it depends on how well a model trained on this machine.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from cachenet.core.runtime import load_cache_model
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
def test_demo_json_and_cleanup(cli_cache, digits_bundle, digits_splits, tmp_path):
    from cachenet.core.bundle import repack

    # Without the label-shift gate, which of its inputs the agent answers is the shipped
    # gate's alone: known here by construction, whatever the training gave the prior.
    bundle = repack(digits_bundle[0], tmp_path / "gate-only", fields={"label_shift": None}).root
    env = {**os.environ, "CACHENET_CACHE_DIR": str(cli_cache)}
    proc = subprocess.run([sys.executable, "-m", "cachenet", "demo", "--requests", "60",
                           "--mean-run", "2", "--rtt-ms", "30", "--json",
                           "--bundle", str(bundle)], capture_output=True, text=True,
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
    # cachenet answers at the edge exactly the requests the bundle's gate is sure of.
    idx = class_run_stream(digits_splits.test.y, 60, mean_run=2, seed=0)
    local = load_cache_model(bundle).predict(digits_splits.test.x[idx]).local
    assert result["cachenet"]["escalation_rate"] == pytest.approx(1.0 - local.mean())
    assert local.mean() >= 0.25  # a gate that answers half, over ~30 class runs
    assert result["cachenet"]["mean_ms"] < result["cloud_only"]["mean_ms"]
    assert "cachenet mean latency" in proc.stdout


def listening(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE and any(
            c.status == psutil.CONN_LISTEN for c in proc.net_connections(kind="tcp"))
    except psutil.Error:
        return False


@pytest.mark.slow
def test_interrupted_demo_stops_its_processes(cli_cache):
    env = {**os.environ, "CACHENET_CACHE_DIR": str(cli_cache)}
    # The demo's bundle first (trained on a first run, however long that takes here), so
    # that the wait below is for the daemons alone.
    first = subprocess.run([sys.executable, "-m", "cachenet", "demo", "--requests", "10"],
                           capture_output=True, text=True, env=env, timeout=3600)
    assert first.returncode == 0, first.stderr[-2000:]
    # The demo gets Ctrl-C as a terminal would give it: a process that ignores SIGINT
    # passes that on to its children, and Python then never raises KeyboardInterrupt.
    demo = subprocess.Popen([sys.executable, "-m", "cachenet", "demo", "--requests", "5000",
                             "--rtt-ms", "40"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    # Wait until both daemons are serving (each listens on its port: started, not
    # starting), then interrupt.
    while time.monotonic() < deadline:
        kids = [p for p in children_of(demo.pid) if "python" in p.name()]
        if len(kids) >= 2 and all(listening(p) for p in kids):
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


def phases_the_general_model_escalates(bundle, splits) -> tuple[tuple[int, ...], ...]:
    """Two groups of three digits, those the bundle's general model answers least."""
    local = load_cache_model(bundle).predict(splits.test.x).local
    rates = [local[splits.test.y == c].mean() for c in range(10)]
    order = [int(c) for c in np.argsort(rates, kind="stable")]
    return tuple(order[:3]), tuple(order[3:6])


@pytest.mark.slow
def test_drift_demo_specialises_each_phase_and_loses_nothing(cli_cache, digits_bundle,
                                                           digits_splits, tmp_path):
    from cachenet.sim.drift import format_drift, run_drift_demo

    phases = phases_the_general_model_escalates(digits_bundle[0], digits_splits)
    # A phase waits for its partition model without a clock of its own: the bound is
    # only there to end a run that hangs.
    result = run_drift_demo(after=150, cache_dir=cli_cache, bundle=digits_bundle[0],
                            phases=phases, partition_trainer="oracle", keep_logs=tmp_path,
                            max_wait_s=300)
    logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}
    assert result["failed_requests"] == 0, logs
    assert result["pushes_rejected"] == 0 and result["pushes_applied"] >= len(phases), logs
    for phase in result["phases"]:
        assert phase["specialised_after_s"] is not None, (phase, logs)
        assert phase["requests_after"] == 150
        assert phase["escalation_rate_after"] < phase["escalation_rate_before"], (phase, logs)
    assert "online audit" in format_drift(result)
    if result["audit"]["audited"]:  # 2% of edge answers: a few, by chance
        assert 0.0 <= result["audit"]["agreement_bound"] <= result["audit"]["agreement"]


def test_the_demos_refuse_a_bundle_that_is_not_for_digits(bundle_copy):
    from cachenet.exceptions import CachenetError
    from cachenet.sim.demo import digits_bundle

    assert digits_bundle(bundle_copy) == bundle_copy
    manifest = bundle_copy / "manifest.json"
    import json

    data = json.loads(manifest.read_text())
    data["input"]["shape"] = [-1, 3, 8, 8]
    manifest.write_text(json.dumps(data))
    with pytest.raises(CachenetError, match="the demos stream the embedded digits"):
        digits_bundle(bundle_copy)
