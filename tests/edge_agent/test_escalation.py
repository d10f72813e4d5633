"""The agent's escalation target: cachenet's cloud or any Open Inference Protocol server,
one address or a list of replicas.

The OIP test runs a real cloud process and two real agents: one escalates over
cachenet.v1, the other over the OIP (to the cloud's own OIP front end, standing in for
Triton); on the same inputs both must answer every request from the cloud, with the
same labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from cachenet.exceptions import ConfigError
from cachenet.protocol.client import CloudClient
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
    np.testing.assert_array_equal(labels["oip"], labels["cachenet"])
    accuracy = {p: float((labels[p] == digits_splits.test.y[:60]).mean()) for p in labels}
    assert accuracy["oip"] == accuracy["cachenet"]
