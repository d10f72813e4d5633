"""The cloud's Prometheus metrics, scraped over HTTP from a real server process while
requests flow over both protocols."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cachenet.exceptions import CloudRejected
from cachenet.protocol.client import CloudClient
from cachenet.protocol.openinference import OIPClient
from tests.processes import start_cloud
from tests.scrape import scrape, value


def test_counters_move_as_requests_flow(digits_bundle, digits_splits, tmp_path):
    cloud = start_cloud(digits_bundle[0], tmp_path, "--metrics-port", "0")
    port = cloud.info["metrics_port"]
    target = f"127.0.0.1:{cloud.info['port']}"
    x = digits_splits.test.x[:8]
    try:
        before = scrape(port)
        with CloudClient(target) as v1:
            name = v1.model_info(timeout=10).name
            for i in range(4):
                v1.infer(x[2 * i:2 * i + 2], timeout=30)
            with pytest.raises(CloudRejected):
                v1.infer(np.zeros((1, 3), np.float32), timeout=30)
        with OIPClient(target, name) as oip:
            oip.infer(x[:3], timeout=30)
        after = scrape(port)
    finally:
        assert cloud.stop() == 0

    def moved(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, missing_ok=True,
                                                       **labels)

    assert moved("cachenet_cloud_inference_request_success_total", model=name) == 5
    assert moved("cachenet_cloud_inference_request_failure_total", reason="invalid") == 1
    assert moved("cachenet_cloud_inference_count_total") == 11  # 4 x 2 + 3 inputs
    batches = moved("cachenet_cloud_inference_exec_count_total")
    assert 1 <= batches <= 5
    assert moved("cachenet_cloud_inference_queue_duration_seconds_count") == 5
    assert moved("cachenet_cloud_inference_compute_duration_seconds_sum") > 0
    assert moved("cachenet_cloud_request_duration_seconds_count", outcome="ok") == 5
    assert moved("cachenet_cloud_request_duration_seconds_count", outcome="invalid") == 1
    assert value(after, "cachenet_cloud_queue_requests") == 0


def test_the_health_port_answers_without_a_certificate(digits_bundle, tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from cachenet.protocol.tls import make_fleet_certs

    make_fleet_certs(tmp_path / "certs", ["cam-1"], ["localhost", "127.0.0.1"])
    c = tmp_path / "certs"
    cloud = start_cloud(digits_bundle[0], tmp_path, "--health-port", "0",
                        "--tls-ca", str(c / "ca.pem"), "--tls-cert", str(c / "cloud.pem"),
                        "--tls-key", str(c / "cloud.key"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{cloud.info['health_port']}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "cachenet.v1.InferenceService",
                            "inference.GRPCInferenceService"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with grpc.insecure_channel(f"127.0.0.1:{cloud.info['port']}") as channel, \
                pytest.raises(grpc.RpcError):  # the main port still wants mutual TLS
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=5)
    finally:
        assert cloud.stop() == 0
