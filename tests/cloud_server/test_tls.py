"""Mutual TLS on loopback: the cloud serves only clients its fleet CA vouches for, and an
agent calls only as the agent its certificate names; a real agent escalates over it."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cachenet.protocol.client import make_request, open_channel
from cachenet.protocol.tls import TLSFiles, channel_credentials, make_fleet_certs
from cachenet.protocol.v1 import control_pb2 as cpb
from cachenet.protocol.v1 import control_pb2_grpc as cpb_grpc
from cachenet.protocol.v1 import inference_pb2_grpc as pb_grpc
from edge_agent.client import EdgeClient
from tests.generating import serve
from tests.processes import start_cloud, start_edge

X = np.zeros((1, 1, 8, 8), np.float32)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    make_fleet_certs(out, ["cam-1", "cam-2"], ["localhost", "127.0.0.1"])
    return out


@pytest.fixture(scope="module")
def cloud(certs, tmp_path_factory):
    with serve(None, store=tmp_path_factory.mktemp("store"), tls_ca=certs / "ca.pem",
               tls_cert=certs / "cloud.pem", tls_key=certs / "cloud.key") as s:
        yield s


def as_agent(certs, agent: str | None) -> grpc.ChannelCredentials:
    if agent is None:  # trusts the cloud, shows no certificate
        return channel_credentials(TLSFiles(certs / "ca.pem"))
    return channel_credentials(TLSFiles(certs / "ca.pem", certs / f"agent-{agent}.pem",
                                        certs / f"agent-{agent}.key"))


def code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_an_agent_calls_as_itself_only(cloud, certs):
    with open_channel(cloud.target, credentials=as_agent(certs, "cam-1")) as channel:
        infer = pb_grpc.InferenceServiceStub(channel).Infer
        control = cpb_grpc.ControlServiceStub(channel)
        assert infer(make_request(X, agent_id="cam-1"), timeout=10).labels == [0]
        assert infer(make_request(X), timeout=10).labels == [0]  # no claim: its own
        assert code(lambda: infer(make_request(X, agent_id="cam-2"), timeout=10)) == \
            grpc.StatusCode.PERMISSION_DENIED
        control.Register(cpb.RegisterRequest(agent_id="cam-1"), timeout=10)
        for call in (lambda: control.Register(cpb.RegisterRequest(agent_id="cam-2"), timeout=10),
                     lambda: control.Ack(cpb.AckRequest(agent_id="cam-2"), timeout=10),
                     lambda: list(control.Subscribe(cpb.SubscribeRequest(agent_id="cam-2"),
                                                    timeout=10))):
            assert code(call) == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("how", ["plaintext", "no certificate", "another CA"])
def test_a_client_the_fleet_ca_does_not_vouch_for_is_refused(cloud, certs, how, tmp_path):
    if how == "plaintext":
        credentials = None
    elif how == "no certificate":
        credentials = as_agent(certs, None)
    else:
        make_fleet_certs(tmp_path / "rogue", ["cam-1"], ["localhost", "127.0.0.1"])
        credentials = channel_credentials(TLSFiles(
            certs / "ca.pem", tmp_path / "rogue" / "agent-cam-1.pem",
            tmp_path / "rogue" / "agent-cam-1.key"))
    with open_channel(cloud.target, credentials=credentials) as channel:
        infer = pb_grpc.InferenceServiceStub(channel).Infer
        assert code(lambda: infer(make_request(X, agent_id="cam-1"), timeout=5)) == \
            grpc.StatusCode.UNAVAILABLE


def test_a_real_agent_escalates_over_mutual_tls(digits_bundle, certs, tmp_path, digits_splits):
    cloud = start_cloud(digits_bundle[0], tmp_path, "--tls-ca", str(certs / "ca.pem"),
                        "--tls-cert", str(certs / "cloud.pem"),
                        "--tls-key", str(certs / "cloud.key"))
    tls = ["--tls-ca", str(certs / "ca.pem"), "--tls-cert", str(certs / "agent-cam-2.pem"),
           "--tls-key", str(certs / "agent-cam-2.key")]
    agent = start_edge(digits_bundle[0], tmp_path, "--cloud", f"127.0.0.1:{cloud.info['port']}",
                       "--agent-id", "cam-2", "--deadline-ms", "5000", *tls)
    try:
        with EdgeClient(agent.info["endpoint"]) as client:
            reply = client.infer(digits_splits.test.x[0], policy="cloud", timeout=10)
            assert reply["source"] == "cloud", reply
    finally:
        assert agent.stop() == 0
        assert cloud.stop() == 0


def test_certificates_are_for_one_use_and_agents_are_not_hosts(certs, tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from cachenet.exceptions import ConfigError

    def usage(name: str) -> list:
        cert = x509.load_pem_x509_certificate((certs / name).read_bytes())
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    assert usage("agent-cam-1.pem") == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert usage("cloud.pem") == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(ConfigError, match="must not be the cloud's host names"):
        make_fleet_certs(tmp_path / "x", ["localhost"], ["localhost"])


def test_a_ca_without_the_cloud_certificate_is_refused_not_plaintext(certs):
    from cachenet.exceptions import ConfigError
    from cloud_server.config import ServerConfig

    with pytest.raises(ConfigError, match="together"):
        ServerConfig(bundle=certs, tls_ca=certs / "ca.pem").tls()
