"""The in-process API: the daemon's cascade, escalation and stats without a socket."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cachenet.exceptions import InputSpecError, ProtocolError
from edge_agent.local import LocalAgent
from tests.processes import start_cloud


def test_it_answers_on_the_device_and_escalates_to_a_real_cloud(digits_bundle, digits_splits,
                                                               tmp_path):
    bundle, _ = digits_bundle
    cloud = start_cloud(bundle, tmp_path)
    x = digits_splits.test.x[:40]
    try:
        with LocalAgent(bundle=bundle, cloud=f"127.0.0.1:{cloud.info['port']}",
                        deadline_ms=5000, control=False, audit_rate=0.0,
                        spool_dir=tmp_path / "spool") as agent:
            answers = [agent.infer(x[i]) for i in range(len(x))]
            forced = agent.infer(x[0], policy="cloud")
            stats = agent.stats()
    finally:
        assert cloud.stop() == 0
    sources = {a["source"] for a in answers}
    assert sources == {"edge", "cloud"}  # the digits gate answers about half (budget)
    assert forced["source"] == "cloud" and "edge_label" in forced
    assert stats["stats"]["requests"] == len(x) + 1
    assert stats["stats"]["escalations"] == sum(a["source"] == "cloud" for a in answers) + 1


def test_without_a_cloud_every_answer_still_arrives_and_threads_take_turns(digits_bundle,
                                                                          digits_splits):
    bundle, _ = digits_bundle
    x = digits_splits.test.x[:30]
    with LocalAgent(bundle=bundle) as agent:
        results: list[dict] = []

        def run() -> None:
            for i in range(len(x)):
                results.append(agent.infer(x[i]))

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with pytest.raises(InputSpecError):
            agent.infer(np.zeros((3, 3), np.float32))
        with pytest.raises(ProtocolError):
            agent.infer(x[0], policy="nope")
    assert len(results) == 90 and all(r["ok"] for r in results)
    assert {r["source"] for r in results} <= {"edge", "edge-fallback"}
