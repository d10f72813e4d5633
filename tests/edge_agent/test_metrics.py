"""The agent's Prometheus metrics, scraped over HTTP from a real agent process while
requests flow: answered at the edge, escalated, and fallen back."""

from __future__ import annotations

from edge_agent.client import EdgeClient
from tests.processes import start_cloud, start_edge, wait_until
from tests.scrape import scrape, value


def test_counters_move_as_requests_flow(digits_bundle, digits_splits, tmp_path):
    cloud = start_cloud(digits_bundle[0], tmp_path)
    x = digits_splits.test.x[:12]
    agent = start_edge(digits_bundle[0], tmp_path, "--cloud", f"127.0.0.1:{cloud.info['port']}",
                       "--deadline-ms", "5000", "--metrics-port", "0")
    port = agent.info["metrics_port"]
    try:
        before = scrape(port)
        with EdgeClient(agent.info["endpoint"]) as edge:
            for xi in x[:4]:
                assert edge.infer(xi, timeout=30, policy="edge")["source"] == "edge"
            for xi in x[4:10]:
                assert edge.infer(xi, timeout=30, policy="cloud")["source"] == "cloud"
            assert cloud.stop() == 0  # now the cloud is gone: the agent answers itself
            for xi in x[10:12]:
                assert edge.infer(xi, timeout=30, policy="cloud")["source"] == "edge-fallback"
            # The two fallbacks are written to the spool off the request path: wait for it.
            wait_until(lambda: value(scrape(port), "cachenet_edge_spool_items") + value(
                scrape(port), "cachenet_edge_spool_uploaded_total") == 2, timeout=30)
            after = scrape(port)
            version = edge.stats()["model"]["version"]
    finally:
        assert agent.stop() == 0

    def moved(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, missing_ok=True,
                                                       **labels)

    assert moved("cachenet_edge_requests_total", source="edge") == 4
    assert moved("cachenet_edge_requests_total", source="cloud") == 6
    assert moved("cachenet_edge_requests_total", source="edge-fallback") == 2
    assert moved("cachenet_edge_escalations_total") == 8
    assert moved("cachenet_edge_fallbacks_total") == 2
    assert moved("cachenet_edge_request_duration_seconds_count", source="cloud") == 6
    assert moved("cachenet_edge_request_duration_seconds_count", source="edge") == 4
    assert value(after, "cachenet_edge_model_info", version=version) == 1
    assert value(after, "cachenet_edge_spool_items") + \
        value(after, "cachenet_edge_spool_uploaded_total") == 2  # the two fallbacks kept
    assert value(after, "cachenet_edge_process_resident_memory_bytes") > 0
    assert 0 <= value(after, "cachenet_edge_gate_hit_ratio") <= 1

