"""The hostile front forwards what it does not intercept to a real cloud, byte for byte,
and streams the pushes it is given to subscribers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cachenet.exceptions import CloudRejected
from cachenet.protocol.client import CloudClient
from cachenet.protocol.v1 import control_pb2 as pb
from cachenet.protocol.v1 import control_pb2_grpc as pb_grpc
from cachenet.sim.hostile import HostileFront, raw_push, rehashed, start_front
from tests.generating import serve


@pytest.fixture
def front(tmp_path):
    with serve(None, store=tmp_path / "store") as cloud:
        front = HostileFront(cloud.target)
        server, port = start_front(front)
        yield front, f"127.0.0.1:{port}", cloud
        server.stop(0)
        front.close()


def test_calls_pass_through_to_the_cloud_and_its_errors_come_back(front):
    _, target, cloud = front
    x = np.zeros((1, 1, 8, 8), np.float32)
    with CloudClient(target) as client:
        answer = client.infer(x, agent_id="cam", timeout=10)
        assert answer.labels.tolist() == [0] and answer.model_name == "stub"
        with pytest.raises(CloudRejected, match="INVALID_ARGUMENT: input shape"):
            client.infer(np.zeros((2, 2), np.float32), timeout=10)
    assert cloud.parts.service.counts["ok"] == 1
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ControlServiceStub(channel)
        stub.Register(pb.RegisterRequest(agent_id="cam"), timeout=5)
    assert "cam" in cloud.parts.control.agents


def test_queued_pushes_reach_a_subscriber_and_its_acks_are_kept(front):
    front_, target, cloud = front
    files = {"a.bin": b"x" * 10}
    messages = raw_push("p-1", "v1", files, rehashed({"version": "v1"}, files))
    front_.pushes.put(messages)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ControlServiceStub(channel)
        stream = stub.Subscribe(pb.SubscribeRequest(agent_id="cam"), timeout=30)
        got = [next(stream) for _ in messages]
        stream.cancel()
        stub.Ack(pb.AckRequest(agent_id="cam", push_id="p-1", applied=False), timeout=5)
    assert got == messages
    assert [a.push_id for a in front_.acks] == ["p-1"]
    assert not cloud.parts.control.acks  # intercepted: the cloud never saw it
