"""The edge agent as a real process: ZeroMQ API, gate, escalation through the WAN, fallbacks."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from cachenet.core.runtime import load_cache_model
from cachenet.exceptions import ConfigError, ProtocolError
from cachenet.sim.wan import LinkProfile, ProxyThread
from edge_agent.client import EdgeClient
from edge_agent.config import load_config
from tests.processes import start_cloud, start_edge


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("edge")


@pytest.fixture(scope="module")
def cloud(digits_bundle, tmp):
    daemon = start_cloud(digits_bundle[0], tmp)
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture(scope="module")
def wan(cloud):
    with ProxyThread(("127.0.0.1", cloud.info["port"]), LinkProfile.from_rtt(20)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def edge(digits_bundle, wan, tmp):
    daemon = start_edge(digits_bundle[0], tmp, "--cloud", f"127.0.0.1:{wan.port}",
                        "--deadline-ms", "2000")
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture
def client(edge):
    with EdgeClient(edge.info["endpoint"]) as c:
        yield c


@pytest.fixture(scope="module")
def sure_and_unsure(digits_bundle, digits_splits):
    """Test inputs the gate answers locally, and inputs it escalates."""
    model = load_cache_model(digits_bundle[0])
    pred = model.predict(digits_splits.test.x)
    x = digits_splits.test.x
    return x[pred.local], x[~pred.local]


def test_confident_inputs_are_answered_at_the_edge(client, sure_and_unsure, digits_bundle):
    sure, _ = sure_and_unsure
    answer = client.infer(sure[0], timeout=5)
    assert answer["source"] == "edge" and answer["ok"]
    assert answer["confidence"] >= load_cache_model(digits_bundle[0]).gate.threshold
    assert answer["versions"]["cache"] == load_cache_model(digits_bundle[0]).version
    assert {"edge_infer", "agent_total"} <= set(answer["latency_us"])


def test_unsure_inputs_go_to_the_cloud_through_the_wan(client, sure_and_unsure):
    _, unsure = sure_and_unsure
    answer = client.infer(unsure[0], timeout=5)
    assert answer["source"] == "cloud"
    assert answer["versions"]["cloud"].startswith("resnet20:")
    assert answer["latency_us"]["cloud"] >= 20_000  # the emulated 20 ms round trip
    assert "edge_label" in answer and "cloud_server" in answer["latency_us"]
    # What the cloud takes beyond plain requests, as it declared it, not as guessed.
    assert client.stats()["capabilities"] == ["spooled", "uint8-levels"]


def test_a_request_may_bring_its_own_gate(client, sure_and_unsure):
    sure, unsure = sure_and_unsure
    everything = {"score": "entropy", "threshold": 0.0}
    nothing = {"score": "margin", "threshold": 1.5}
    assert client.infer(unsure[0], gate=everything)["source"] == "edge"
    assert client.infer(sure[0], gate=nothing)["source"] == "cloud"
    for bad, message in (({"score": "entropy"}, "gate must be"),
                         ({"score": "vibes", "threshold": 0.5}, "gate score must be one of"),
                         ({"score": "entropy", "threshold": "high"}, "must be a number")):
        with pytest.raises(ProtocolError, match=message):
            client.infer(sure[0], gate=bad)
    assert client.ping()  # and it keeps serving


def test_policies_force_a_side(client, sure_and_unsure):
    sure, unsure = sure_and_unsure
    assert client.infer(unsure[0], policy="edge")["source"] == "edge"
    assert client.infer(sure[0], policy="cloud")["source"] == "cloud"


def test_stats_count_every_request_and_report_telemetry(client, sure_and_unsure):
    sure, unsure = sure_and_unsure
    before = client.stats()["stats"]
    for x in list(sure[:5]) + list(unsure[:3]):
        client.infer(x)
    reply = client.stats()
    s = reply["stats"]
    assert s["requests"] - before["requests"] == 8
    assert s["hits"] - before["hits"] == 5
    assert s["escalations"] + s["fallbacks"] - before["escalations"] - before["fallbacks"] == 3
    assert s["requests"] == s["hits"] + s["escalations"] + s["fallbacks"]
    assert s["latency_us"]["p50"] > 0 and s["latency_us"]["p99"] >= s["latency_us"]["p50"]
    t = reply["telemetry"]
    assert 0 <= t["cpu_percent"] <= 100 * 64 and t["process_rss_bytes"] > 0
    assert "temperature_c" in t


def malformed() -> dict[str, tuple[list[bytes], str]]:
    head = {"op": "infer", "id": "m", "dtype": "float32", "shape": [1, 1, 8, 8]}
    x = np.zeros((1, 1, 8, 8), np.float32).tobytes()

    def h(**kw) -> bytes:
        return json.dumps({**head, **kw}).encode()

    return {
        "garbage frame": ([b"", b"\x00\xff garbage"], "header is not JSON"),
        "not an object": ([b"", b"[1, 2]"], "JSON object"),
        "unknown op": ([b"", json.dumps({"op": "explode"}).encode()], "unknown op"),
        "unknown field": ([b"", h(colour="red"), x], "unknown header field(s) ['colour']"),
        "wrong dtype": ([b"", h(dtype="float64"), x + x], "dtype is float64"),
        "wrong shape": ([b"", h(shape=[1, 3, 8, 8]), x * 3], "input shape is (1, 3, 8, 8)"),
        "short data": ([b"", h(), x[:10]], "tensor data is 10 bytes"),
        "oversize": ([b"", h(shape=[1 << 16, 1, 64, 64]), x], "over the limit"),
        "missing data": ([b"", h()], "exactly one data frame"),
        "extra frames": ([b"", h(), x, x], "exactly one data frame"),
        "bad policy": ([b"", h(policy="yolo"), x], "policy must be one of"),
        "empty": ([b""], "empty message"),
        "bad deadline": ([b"", h(deadline_ms="soon"), x], "deadline_ms must be a positive"),
        "nested JSON": ([b"", b"[" * 2000], "header is not JSON"),
        "two inputs": ([b"", h(shape=[2, 1, 8, 8]), x + x], "one input per request"),
        "bool in shape": ([b"", h(shape=[True, 1, 8, 8]), x], "list of integers"),
        "float in shape": ([b"", h(shape=[1.0, 1, 8, 8]), x], "list of integers"),
        "zero dimension": ([b"", h(shape=[0, 1, 8, 8]), b""], "positive dimensions"),
        "too many dims": ([b"", h(shape=[1] * 65), x[:4]], "1 to 8 dimensions"),
        "huge dimension": ([b"", h(shape=[1, 10**30]), x], "over the limit"),
        "bool id": ([b"", json.dumps({"op": "ping", "id": True}).encode()], "id must be"),
        "NaN input": ([b"", h(), np.full((1, 1, 8, 8), np.nan, np.float32).tobytes()],
                      "NaN or infinite"),
        "infinite input": ([b"", h(), np.full((1, 1, 8, 8), np.inf, np.float32).tobytes()],
                           "NaN or infinite"),
        "huge input": ([b"", h(), np.full((1, 1, 8, 8), 3e38, np.float32).tobytes()],
                       "output is not finite"),
        "number as shape": ([b"", h(shape=64), x], "shape must be a list of integers"),
        "null shape": ([b"", h(shape=None), x], "shape must be a list of integers"),
        "list as score": ([b"", h(gate={"score": ["max_softmax"], "threshold": 0.5}), x],
                          "gate score must be one of"),
        "long dtype": ([b"", h(dtype="f" * 3000), x], "unsupported dtype 'ffff"),
    }


@pytest.mark.parametrize("case", list(malformed()))
def test_malformed_requests_get_clear_errors_and_the_agent_keeps_serving(client, case,
                                                                         sure_and_unsure):
    frames, message = malformed()[case]
    reply = client.send_raw(frames, timeout=5)
    assert reply["ok"] is False
    assert message in reply["error"]["message"], reply
    assert reply["error"]["type"] != "InternalError", reply
    assert len(reply["error"]["message"]) < 400, "an error echoes at most a bounded excerpt"
    if len(frames) > 1 and b'"id": "m"' in frames[1]:
        assert reply["id"] == "m", "the reply names the request"
    assert client.infer(sure_and_unsure[0][0], timeout=5)["source"] == "edge"


def test_client_raises_on_an_error_reply(client):
    with pytest.raises(ProtocolError, match="input shape"):
        client.infer(np.zeros((2, 8), np.float32))


def test_client_times_out_and_skips_a_late_reply_to_an_earlier_call():
    """The client against a bare ROUTER that answers late: the timed-out call raises,
    and the next call returns its own answer, not the late one."""
    import threading

    import zmq

    from edge_agent.client import EdgeTimeout

    router = zmq.Context.instance().socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    answered: list[str] = []

    def answer(frames: list[bytes]) -> None:
        rid = json.loads(frames[2])["id"]
        router.send_multipart([*frames[:2], json.dumps({"id": rid, "ok": True,
                                                        "pong": True}).encode()])
        answered.append(rid)

    try:
        with EdgeClient(f"tcp://127.0.0.1:{port}") as edge:
            with pytest.raises(EdgeTimeout, match=r"within 0\.05 s"):
                edge.ping(timeout=0.05)
            late = router.recv_multipart()  # the timed-out call, still unanswered

            def peer() -> None:
                answer(late)  # first the late answer, then the new call's
                answer(router.recv_multipart())

            thread = threading.Thread(target=peer)
            thread.start()
            reply = edge.call("ping", timeout=10)
            thread.join(10)
            assert len(answered) == 2 and reply["id"] == answered[1] != answered[0]
    finally:
        router.close(linger=0)


def test_cloud_down_falls_back_to_the_edge(digits_bundle, tmp, sure_and_unsure):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    daemon = start_edge(digits_bundle[0], tmp, "--cloud", f"127.0.0.1:{dead}",
                        "--deadline-ms", "300")
    try:
        with EdgeClient(daemon.info["endpoint"]) as c:
            answers = [c.infer(x, timeout=5) for x in sure_and_unsure[1][:5]]
            assert all(a["source"] == "edge-fallback" for a in answers)
            assert all("CloudUnavailable" in a["fallback_reason"] or "CloudTimeout"
                       in a["fallback_reason"] for a in answers)
            assert c.stats()["stats"]["fallbacks"] == 5
    finally:
        assert daemon.stop() == 0


def test_deadline_exceeded_on_a_slow_wan_falls_back(digits_bundle, cloud, tmp,
                                                    sure_and_unsure):
    with ProxyThread(("127.0.0.1", cloud.info["port"]), LinkProfile.from_rtt(400)) as slow:
        daemon = start_edge(digits_bundle[0], tmp, "--cloud", f"127.0.0.1:{slow.port}",
                            "--deadline-ms", "150")
        try:
            with EdgeClient(daemon.info["endpoint"]) as c:
                answer = c.infer(sure_and_unsure[1][0], timeout=5)
                assert answer["source"] == "edge-fallback"
                assert "CloudTimeout" in answer["fallback_reason"]
                assert 140_000 <= answer["latency_us"]["agent_total"] < 1_000_000
                # The network recovers: the same agent escalates again.
                slow.configure(LinkProfile.from_rtt(10))
                answers = [c.infer(x, timeout=5) for x in sure_and_unsure[1][:20]]
                assert any(a["source"] == "cloud" for a in answers)
        finally:
            assert daemon.stop() == 0


def test_edge_only_agent_without_a_cloud(digits_bundle, tmp, sure_and_unsure):
    daemon = start_edge(digits_bundle[0], tmp)
    try:
        with EdgeClient(daemon.info["endpoint"]) as c:
            answer = c.infer(sure_and_unsure[1][0])
            assert answer["source"] == "edge-fallback"
            assert answer["fallback_reason"] == "no cloud configured"
            assert c.ping()
    finally:
        assert daemon.stop() == 0


def test_config_layers(tmp_path, digits_bundle):
    f = tmp_path / "agent.json"
    f.write_text(json.dumps({"deadline_ms": 100, "cloud": "file:1", "threads": 2}))
    env = {"CACHENET_CLOUD": "env:2", "CACHENET_THREADS": "3"}
    c = load_config(file=f, environ=env, threads=4, bundle=digits_bundle[0])
    assert (c.deadline_ms, c.cloud, c.threads) == (100.0, "env:2", 4)
    toml = tmp_path / "agent.toml"
    toml.write_text('bind = "tcp://127.0.0.1:0"\ndeadline_ms = 50\n')
    assert load_config(file=toml, environ={}).deadline_ms == 50
    f.write_text(json.dumps({"dedline_ms": 1}))
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(file=f, environ={})
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(environ={"CACHENET_DEADLINE_MS": "soon"})
    with pytest.raises(ConfigError, match="deadline_ms must be > 0"):
        load_config(environ={}, deadline_ms=-1)


def test_a_frame_over_the_message_cap_is_refused_and_the_agent_keeps_serving(
        digits_bundle, tmp, sure_and_unsure):
    """ZMQ_MAXMSGSIZE: a 16 MiB frame against the 8 MiB cap drops its sender's connection
    before the frame is buffered, so it gets no answer; other clients are served."""
    from cachenet.exceptions import EdgeTimeout

    daemon = start_edge(digits_bundle[0], tmp)
    try:
        endpoint = daemon.info["endpoint"]
        with EdgeClient(endpoint) as good, EdgeClient(endpoint) as bad:
            before = good.stats()["stats"]["requests"]
            head = {"op": "infer", "id": "big", "dtype": "float32", "shape": [1, 1, 8, 8]}
            for _ in range(3):
                bad.sock.send_multipart([b"", json.dumps(head).encode(), bytes(16 << 20)],
                                        copy=False)
                with pytest.raises(EdgeTimeout):  # uncapped, it answers "tensor data is ..."
                    bad._recv(1000, 1.0)
                assert good.infer(sure_and_unsure[0][0], timeout=5)["ok"]
            assert good.stats()["stats"]["requests"] == before + 3  # the big frames never came
    finally:
        assert daemon.stop() == 0
