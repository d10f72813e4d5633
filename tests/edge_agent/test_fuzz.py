"""The edge agent's ZeroMQ API under fuzzing, as a real process: every generated message
gets one strict-JSON reply, an answer or a clear error (ProtocolError, InputSpecError,
never InternalError), and the agent keeps serving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from cachenet.core.tensors import DTYPES
from edge_agent import wire
from tests.fuzzing import FUZZ, JSON, SHAPES, bounded, finite
from tests.processes import start_edge

CLEAR = {"ProtocolError", "InputSpecError"}


@pytest.fixture(scope="module")
def agent(digits_bundle, tmp_path_factory):
    daemon = start_edge(digits_bundle[0], tmp_path_factory.mktemp("fuzz-edge"))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(daemon.info["endpoint"])
    yield sock
    sock.close()
    ctx.term()
    assert daemon.stop() == 0


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
DATA = st.one_of(
    st.lists(FLOATS, min_size=64, max_size=64).map(
        lambda v: np.array(v, np.float32).tobytes()),
    st.just(np.zeros(64, np.float32).tobytes()),
    st.binary(max_size=600))
HEADER_VALUES = {
    "op": st.sampled_from(["infer", "stats", "ping"]) | JSON,
    "id": st.text(max_size=30) | st.integers() | JSON,
    "dtype": st.sampled_from(["float32", *DTYPES]) | JSON,
    "shape": st.sampled_from([[1, 1, 8, 8], [1, 8, 8]]) | SHAPES,
    "policy": st.sampled_from(["auto", "edge", "cloud"]) | JSON,
    "deadline_ms": st.floats(allow_nan=True) | JSON,
    "gate": st.fixed_dictionaries({"score": st.sampled_from(["max_softmax", "margin"]) | JSON,
                                   "threshold": st.floats(allow_nan=True) | JSON}) | JSON,
}


@st.composite
def messages(draw) -> list[bytes]:
    """A request bent in some of its fields, frames added or missing, or noise."""
    header = {"op": "infer", "id": "f", "dtype": "float32", "shape": [1, 1, 8, 8]}
    for key in draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), max_size=3, unique=True)):
        if draw(st.booleans()):
            header[key] = draw(HEADER_VALUES[key])
        else:
            header.pop(key, None)
    if draw(st.integers(0, 9)) == 0:
        header[draw(st.text(max_size=8))] = draw(JSON)
    head = json.dumps(header).encode() if draw(st.integers(0, 9)) else draw(st.binary(
        max_size=64))
    frames = draw(st.lists(DATA, max_size=2)) if draw(st.booleans()) else [draw(DATA)]
    return [b"", head, *frames] if draw(st.integers(0, 19)) else [b""]


@FUZZ
@given(frames=messages())
def test_every_message_gets_one_clear_reply(agent, frames):
    agent.send_multipart(frames)
    reply = wire.decode_reply(agent.recv_multipart()[-1])  # strict JSON, or it raises
    assert isinstance(reply.get("ok"), bool) and "id" in reply
    if reply["ok"]:
        if "label" in reply:
            assert finite(reply["confidence"]) and 0 <= reply["confidence"] <= 1
        return
    assert reply["error"]["type"] in CLEAR, reply
    assert bounded(reply["error"]["message"]), reply


def test_the_agent_still_serves_after_the_fuzzing(agent, digits_splits):
    x = np.ascontiguousarray(digits_splits.test.x[:1])
    agent.send_multipart(wire.encode_request("infer", "after", x))
    reply = wire.decode_reply(agent.recv_multipart()[-1])
    assert reply["ok"] and reply["id"] == "after"
