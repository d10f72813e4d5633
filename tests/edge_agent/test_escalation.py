"""The agent's escalation target: cachenet's cloud or any Open Inference Protocol server,
one address or a list of replicas.

The OIP test runs a real cloud process and two real agents: one escalates over
cachenet.v1, the other over the OIP (to the cloud's own OIP front end, standing in for
Triton); on the same inputs both must answer every request from the cloud, with the
same labels.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest

from cachenet.exceptions import ConfigError
from cachenet.protocol.client import CloudClient
from cachenet.protocol.oip import grpc_predict_v2_pb2 as pb
from cachenet.protocol.oip import grpc_predict_v2_pb2_grpc as pb_grpc
from edge_agent.client import EdgeClient
from edge_agent.config import AgentConfig
from edge_agent.escalation import EscalationTarget, channel_target
from tests.processes import start_cloud, start_edge


@pytest.mark.parametrize("spec, target", [
    ("10.0.0.5:50051", "10.0.0.5:50051"),
    ("cloud.example:50051", "cloud.example:50051"),
    ("dns:///cloud.example:50051", "dns:///cloud.example:50051"),
    ("10.0.0.5:1, 10.0.0.6:2", "ipv4:10.0.0.5:1,10.0.0.6:2"),
    ("[::1]:1,[::2]:2", "ipv6:[::1]:1,[::2]:2"),
])
def test_channel_targets(spec, target):
    assert channel_target(spec) == target


@pytest.mark.parametrize("spec, error", [
    ("a.example:1,b.example:2", "not an IP address"),
    ("10.0.0.5:1,[::1]:2", "mixes IPv4 and IPv6"),
    ("10.0.0.5:1,10.0.0.6:x", "has no port"),
])
def test_bad_replica_lists_are_refused_by_name(spec, error):
    with pytest.raises(ConfigError, match=error):
        channel_target(spec)


def test_targets_are_checked_when_configured():
    with pytest.raises(ConfigError, match="needs the model's name"):
        AgentConfig(cloud="127.0.0.1:1", escalate="oip")
    with pytest.raises(ConfigError, match="is not one of cachenet, oip"):
        AgentConfig(cloud="127.0.0.1:1", escalate="rest")
    assert AgentConfig().escalation_target() is None
    t = AgentConfig(cloud="127.0.0.1:1", escalate_to="127.0.0.1:2", escalate="oip",
                    escalate_model="m").escalation_target()
    assert t == EscalationTarget("oip", "127.0.0.1:2", "m") and not t.sends_levels


def test_an_agent_escalates_to_an_oip_server_with_the_same_answers(
        digits_bundle, digits_splits, tmp_path):
    x = digits_splits.test.x[:60]
    cloud = start_cloud(digits_bundle[0], tmp_path)
    address = f"127.0.0.1:{cloud.info['port']}"
    try:
        with CloudClient(address) as c:
            model = c.model_info(timeout=10)
        answers = {}
        for protocol, extra in (("cachenet", ["--cloud", address]),
                                ("oip", ["--escalate", "oip", "--escalate-to", address,
                                         "--escalate-model", model.name])):
            agent = start_edge(digits_bundle[0], tmp_path, *extra, "--deadline-ms", "5000")
            try:
                with EdgeClient(agent.info["endpoint"]) as edge:
                    answers[protocol] = [edge.infer(xi, timeout=30, policy="cloud")
                                         for xi in x]
                    stats = edge.stats()
            finally:
                assert agent.stop() == 0
            assert [a["source"] for a in answers[protocol]] == ["cloud"] * len(x), protocol
            assert stats["stats"]["fallbacks"] == 0
    finally:
        assert cloud.stop() == 0
    labels = {p: np.array([a["label"] for a in answers[p]]) for p in answers}
    np.testing.assert_array_equal(labels["oip"], labels["cachenet"])  # so the same accuracy


class ForeignServer(pb_grpc.GRPCInferenceServiceServicer):
    """An OIP server as Triton is one: its own tensor names, more outputs than asked for
    (one of them BYTES), and none of cachenet's parameters."""

    def __init__(self) -> None:
        self.requests: list[pb.ModelInferRequest] = []

    @staticmethod
    def classify(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)[:, :10].astype(np.float32) * 10

    def ModelInfer(self, request, context):
        self.requests.append(request)
        t = request.inputs[0]
        if t.name != "INPUT__0" or request.model_name != "resnet":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected input {t.name}")
        x = np.frombuffer(request.raw_input_contents[0], "<f4").reshape(list(t.shape))
        logits = self.classify(x)
        names = b"".join(len(b"cat").to_bytes(4, "little") + b"cat" for _ in range(len(x)))
        return pb.ModelInferResponse(
            model_name="resnet", model_version="3", id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(name="names", datatype="BYTES",
                                                             shape=[len(x)]),
                     pb.ModelInferResponse.InferOutputTensor(name="OUTPUT__0", datatype="FP32",
                                                             shape=list(logits.shape))],
            raw_output_contents=[names, logits.astype("<f4").tobytes()])


def serve_oip(servicer: pb_grpc.GRPCInferenceServiceServicer) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_an_agent_escalates_to_a_foreign_oip_server(digits_bundle, digits_splits, tmp_path):
    foreign = ForeignServer()
    server, port = serve_oip(foreign)
    x = digits_splits.test.x[:20]
    agent = start_edge(digits_bundle[0], tmp_path, "--escalate", "oip", "--escalate-to",
                       f"127.0.0.1:{port}", "--escalate-model", "resnet", "--escalate-input",
                       "INPUT__0", "--escalate-output", "OUTPUT__0", "--deadline-ms", "5000")
    try:
        with EdgeClient(agent.info["endpoint"]) as edge:
            answers = [edge.infer(xi, timeout=30, policy="cloud") for xi in x]
            capabilities = edge.stats()["capabilities"]
    finally:
        assert agent.stop() == 0
        server.stop(0)
    assert capabilities == []  # it declares none of cachenet's: plain requests only
    assert [a["source"] for a in answers] == ["cloud"] * len(x)
    assert [a["label"] for a in answers] == ForeignServer.classify(x).argmax(1).tolist()
    assert all(a["latency_us"]["cloud_server"] > 0 for a in answers)
    asked = foreign.requests[0]
    assert [o.name for o in asked.outputs] == ["OUTPUT__0"]  # only the logits asked for
    assert asked.inputs[0].datatype == "FP32"  # not pixel levels: its model takes FP32


class Flaky(ForeignServer):
    """Answers UNAVAILABLE to the next ``fail`` calls, as a replica going away does."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = 0

    def ModelInfer(self, request, context):
        if self.fail:
            self.fail -= 1
            self.requests.append(request)
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")
        return super().ModelInfer(request, context)


def test_an_unavailable_escalation_is_tried_once_more(digits_bundle, digits_splits, tmp_path):
    flaky = Flaky()
    server, port = serve_oip(flaky)
    agent = start_edge(digits_bundle[0], tmp_path, "--escalate", "oip", "--escalate-to",
                       f"127.0.0.1:{port}", "--escalate-model", "resnet", "--escalate-input",
                       "INPUT__0", "--escalate-output", "OUTPUT__0", "--deadline-ms", "5000",
                       "--no-spool")
    x = digits_splits.test.x[:1]
    try:
        with EdgeClient(agent.info["endpoint"]) as edge:
            flaky.fail = 1  # the retry succeeds: answered by the cloud, two calls
            assert edge.infer(x[0], timeout=30, policy="cloud")["source"] == "cloud"
            assert len(flaky.requests) == 2
            flaky.fail = 5  # both fail: the edge answers, and no third call is made
            answer = edge.infer(x[0], timeout=30, policy="cloud")
            assert answer["source"] == "edge-fallback"
            assert "CloudUnavailable" in answer["fallback_reason"]
            assert len(flaky.requests) == 4 and flaky.fail == 3
    finally:
        assert agent.stop() == 0
        server.stop(0)
