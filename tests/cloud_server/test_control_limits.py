"""The control plane keeps bounded state, and names what is wrong with a call."""

from __future__ import annotations

import time

import grpc
import numpy as np
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
    stub.ReportStats(pb.StatsReport(agent_id="cam-0", requests=5), timeout=5)  # cam-1 oldest now
    stub.Register(pb.RegisterRequest(agent_id="cam-9"), timeout=5)
    assert set(service.agents) == {"cam-0", "cam-2", "cam-9"}
    assert set(service.reports) == {"cam-0"} and service.evicted == 1
    assert len(service.seen) == 3
    service.acks = type(service.acks)(maxlen=4)
    for i in range(6):
        stub.Ack(pb.AckRequest(agent_id="cam-0", version=f"v{i}"), timeout=5)
    assert [a["version"] for a in service.acks] == ["v2", "v3", "v4", "v5"]


def test_subscribed_agents_are_never_evicted(control):
    served, stub = control
    service = served.parts.control
    service.max_agents = 2
    streams = [stub.Subscribe(pb.SubscribeRequest(agent_id=f"cam-{i}"), timeout=30)
               for i in range(2)]
    deadline = time.monotonic() + 10
    while len(service.subscribed) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(service.subscribed) == {"cam-0", "cam-1"}
    code, details = code_of(lambda: stub.Register(pb.RegisterRequest(agent_id="cam-9"),
                                                  timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 2 agents" in details
    streams[0].cancel()
    while "cam-0" in service.subscribed and time.monotonic() < deadline:
        time.sleep(0.02)
    stub.Register(pb.RegisterRequest(agent_id="cam-9"), timeout=5)  # cam-0 made room
    assert set(service.seen) == {"cam-1", "cam-9"}
    streams[1].cancel()


def test_the_specialiser_learns_only_from_known_agents(control):
    served, stub = control
    service = served.parts.control
    seen: list[str] = []

    class Recorder:
        def observe(self, agent, x, labels):
            seen.append(agent)

        def forget(self, agent):
            seen.append(f"forgot {agent}")

    service.specializer = Recorder()
    x, labels = np.zeros((1, 3, 4, 4), np.float32), np.zeros(1, np.int64)
    service.observe("invented", x, labels)
    stub.Register(pb.RegisterRequest(agent_id="cam"), timeout=5)
    service.observe("cam", x, labels)
    service.forget("cam")
    service.observe("cam", x, labels)
    assert seen == ["cam", "forgot cam"]


def test_maps_an_agent_sends_are_bounded(control):
    _, stub = control
    big = {f"k{i}": "v" for i in range(5000)}
    code, details = code_of(lambda: stub.Register(pb.RegisterRequest(agent_id="cam", device=big),
                                                  timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "device has more than" in details
    code, details = code_of(lambda: stub.ReportStats(
        pb.StatsReport(agent_id="cam", telemetry={"k" * 1000: 1.0}), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "telemetry" in details
