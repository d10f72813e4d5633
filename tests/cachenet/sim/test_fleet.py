"""The fleet harness: a real cloud, WAN and agents on loopback, and nothing left running after.

Every process is real (port 0, readiness through ready files); teardown is checked
with psutil on the whole tree of processes the harness started, grandchildren
included, whether the ``with`` block ends normally, raises, or never starts.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from cachenet.exceptions import CachenetError
from cachenet.sim.fleet import Fleet, FleetConfig
from cachenet.sim.wan import LinkProfile
from tests.processes import SINGLE_THREAD, wait_until

RTT_MS = 20.0


def descendants() -> set[psutil.Process]:
    return set(psutil.Process().children(recursive=True))


def assert_all_gone(procs: set[psutil.Process]) -> None:
    """Every process in ``procs`` has exited (Process.stop reaps its own; a grandchild
    would be reaped by init: either way none may still run)."""
    _, alive = psutil.wait_procs(list(procs), timeout=10)
    running = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not running, f"left running: {running}"


def round_trip_ms(client, x: np.ndarray, policy: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    answer = client.infer(x, policy=policy, timeout=30)
    return answer, (time.perf_counter() - t0) * 1e3


@pytest.mark.slow
def test_cloud_wan_and_agents_serve_and_every_process_stops(digits_bundle, digits_splits):
    before = descendants()
    x = digits_splits.test.x[0]
    config = FleetConfig(digits_bundle[0], agents=2, link=LinkProfile.from_rtt(RTT_MS),
                         deadline_ms=5000, env=SINGLE_THREAD, agent_ids=("camera-1",))
    with Fleet(config) as fleet:
        workdir = fleet.workdir
        started = descendants() - before
        assert {fleet.cloud.proc.pid, *(a.pid for a in fleet.agents)} <= {
            p.pid for p in started}
        assert [a.id for a in fleet.agents] == ["camera-1", "agent-2"]
        assert len({a.endpoint for a in fleet.agents}) == 2
        assert fleet.cloud_target == f"127.0.0.1:{fleet.proxy.port}" != \
            f"127.0.0.1:{fleet.cloud_port}"
        for agent in fleet.agents:
            with agent.client() as client:
                up = fleet.proxy.bytes_up
                answer, ms = round_trip_ms(client, x, "cloud")
                assert answer["source"] == "cloud"
                assert ms >= RTT_MS  # it crossed the emulated WAN
                assert fleet.proxy.bytes_up > up
            assert agent.stats()["model"]["version"]
        # A fresh agent of the same cloud and WAN, stopped when its block ends.
        with fleet.agent("fresh") as fresh, fresh.client() as client:
            assert fresh in fleet.agents
            assert client.infer(x, policy="cloud", timeout=30)["source"] == "cloud"
            fresh_proc = fresh.psutil()
        assert fresh not in fleet.agents and not fresh_proc.is_running()
        # Each agent has a state directory of its own under the work directory.
        assert {p.name for p in (workdir / "agents").iterdir()} >= {"camera-1", "agent-2"}
        fleet.configure(LinkProfile())  # a faster network, the same processes
        with fleet.agents[0].client() as client:
            assert round_trip_ms(client, x, "cloud")[1] < 10 * RTT_MS
        started = descendants() - before
    assert_all_gone(started)
    assert not workdir.exists()  # the fleet made it, the fleet removed it


@pytest.mark.slow
def test_a_restarted_cloud_serves_the_same_agents_and_an_error_still_tears_down(
        digits_bundle, digits_splits, tmp_path):
    before = descendants()
    x = digits_splits.test.x[0]
    config = FleetConfig(digits_bundle[0], link=None, deadline_ms=2000, env=SINGLE_THREAD,
                         workdir=tmp_path, name="direct")
    with pytest.raises(RuntimeError, match="the caller failed"), Fleet(config) as fleet:
        assert fleet.proxy is None and fleet.cloud_target == f"127.0.0.1:{fleet.cloud_port}"
        first, port = fleet.cloud.proc.pid, fleet.cloud_port
        client = fleet.agents[0].client()
        assert client.infer(x, policy="cloud", timeout=30)["source"] == "cloud"
        fleet.restart_cloud(kill=True)  # as a crash would
        assert fleet.cloud.proc.pid != first and fleet.cloud_port == port
        # The agent reconnects to the new cloud by itself (its backoff, not our clock).
        wait_until(lambda: client.infer(x, policy="cloud", timeout=30)["source"] == "cloud",
                   timeout=120)
        client.close()
        started = descendants() - before
        raise RuntimeError("the caller failed")
    assert_all_gone(started)
    assert {p.name for p in tmp_path.glob("*.log")} == {
        "cloud_server-direct.log", "cloud_server-direct-2.log", "edge_agent-direct-agent-1.log"}
    assert tmp_path.exists()  # the caller's: kept


def test_a_cloud_that_cannot_start_leaves_nothing_running(tmp_path: Path):
    before = descendants()
    fleet = Fleet(FleetConfig(tmp_path / "no-such-bundle", workdir=tmp_path / "work"))
    with pytest.raises(CachenetError, match="cloud_server exited"):
        fleet.start()
    assert fleet.agents == [] and fleet.proxy is None
    assert_all_gone(descendants() - before)
    with pytest.raises(CachenetError, match="has not started"):
        fleet.start_agent()
