"""The control plane keeps bounded state, and names what is wrong with a call."""

from __future__ import annotations

import grpc
import pytest

from cachenet.protocol.v1 import control_pb2 as pb
from cachenet.protocol.v1 import control_pb2_grpc as pb_grpc
from tests.generating import serve


@pytest.fixture
def control(tmp_path):
    with serve(None, store=tmp_path / "store") as s:
        channel = grpc.insecure_channel(s.target)
        yield s, pb_grpc.ControlServiceStub(channel)
        channel.close()


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("agent", ["../etc", "a" * 200, "x/y", " ", "-lead"])
def test_a_bad_agent_id_is_invalid_argument_on_every_call(control, agent):
    _, stub = control
    calls = [lambda: stub.Register(pb.RegisterRequest(agent_id=agent), timeout=5),
             lambda: list(stub.Subscribe(pb.SubscribeRequest(agent_id=agent), timeout=5)),
             lambda: stub.Ack(pb.AckRequest(agent_id=agent), timeout=5),
             lambda: stub.ReportStats(pb.StatsReport(agent_id=agent), timeout=5)]
    for call in calls:
        code, details = code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "agent id" in details
        assert len(details) < 300


def test_state_is_kept_for_a_bounded_number_of_agents(control):
    served, stub = control
    service = served.parts.control
    service.max_agents = 3
    for i in range(3):
        stub.Register(pb.RegisterRequest(agent_id=f"cam-{i}"), timeout=5)
    code, details = code_of(lambda: stub.Register(pb.RegisterRequest(agent_id="cam-9"),
                                                  timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 3 agents" in details
    stub.ReportStats(pb.StatsReport(agent_id="cam-1", requests=5), timeout=5)  # known: fine
    assert set(service.agents) == {"cam-0", "cam-1", "cam-2"}
    service.acks = type(service.acks)(maxlen=4)
    for i in range(6):
        stub.Ack(pb.AckRequest(agent_id="cam-0", version=f"v{i}"), timeout=5)
    assert [a["version"] for a in service.acks] == ["v2", "v3", "v4", "v5"]


def test_maps_an_agent_sends_are_bounded(control):
    _, stub = control
    big = {f"k{i}": "v" for i in range(5000)}
    code, details = code_of(lambda: stub.Register(pb.RegisterRequest(agent_id="cam", device=big),
                                                  timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "device has more than" in details
    code, details = code_of(lambda: stub.ReportStats(
        pb.StatsReport(agent_id="cam", telemetry={"k" * 1000: 1.0}), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "telemetry" in details
