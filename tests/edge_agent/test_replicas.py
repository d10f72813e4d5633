"""Scale-out: an agent balances escalations over two cloud replicas and keeps answering,
losing nothing, when one of them is killed (SIGKILL) in the middle of a stream."""

from __future__ import annotations

import os
import signal

from edge_agent.client import EdgeClient
from tests.processes import Load, start_cloud, start_edge, wait_until
from tests.scrape import scrape, value

SERVED = "cachenet_cloud_inference_request_success_total"


def test_two_replicas_share_escalations_and_one_can_die(digits_bundle, digits_splits,
                                                        tmp_path):
    replicas = [start_cloud(digits_bundle[0], tmp_path, "--metrics-port", "0")
                for _ in range(2)]
    address = ",".join(f"127.0.0.1:{r.info['port']}" for r in replicas)
    agent = start_edge(digits_bundle[0], tmp_path, "--cloud", address, "--deadline-ms", "5000")
    x = digits_splits.test.x[:50]
    try:
        with EdgeClient(agent.info["endpoint"]) as edge:
            first = [edge.infer(xi, timeout=30, policy="cloud") for xi in x[:40]]
        assert [a["source"] for a in first] == ["cloud"] * 40
        served = [value(scrape(r.info["metrics_port"]), SERVED) for r in replicas]
        assert sum(served) == 40 and min(served) >= 10, served  # round-robin, both used
        with Load(agent.info["endpoint"], x, policy="cloud") as load:
            wait_until(lambda: load.ok >= 20)
            os.killpg(replicas[0].proc.pid, signal.SIGKILL)  # mid-stream, no goodbye
            replicas[0].proc.wait(30)
            killed_at = load.ok
            wait_until(lambda: load.ok >= killed_at + 100)
        with EdgeClient(agent.info["endpoint"]) as edge:
            after = [edge.infer(xi, timeout=30, policy="cloud") for xi in x[:10]]
            # Anything answered by the edge while the replica died waits in the spool,
            # and goes to the survivor.
            wait_until(lambda: edge.stats()["spool"]["items"] == 0)
            stats = edge.stats()
        survivor = value(scrape(replicas[1].info["metrics_port"]), SERVED)
    finally:
        assert agent.stop() == 0
        assert replicas[1].stop() == 0
    assert load.failed == 0 and load.ok == load.sent  # every request answered
    assert [a["source"] for a in after] == ["cloud"] * 10  # the survivor serves them all
    fallbacks = load.sources["edge-fallback"]
    assert stats["spool"]["uploaded"] == stats["spool"]["spooled"] == fallbacks
    assert survivor >= served[1] + 100 + 10
