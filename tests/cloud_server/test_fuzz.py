"""The cloud daemon under fuzzing, as a real process on loopback: generated inference and
control-plane calls each get an answer or a clear error (never UNKNOWN or INTERNAL), and
the daemon keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachenet.core.tensors import DTYPES
from cachenet.protocol.client import make_request
from cachenet.protocol.v1 import control_pb2 as cpb
from cachenet.protocol.v1 import control_pb2_grpc as cpb_grpc
from cachenet.protocol.v1 import inference_pb2 as pb
from cachenet.protocol.v1 import inference_pb2_grpc as pb_grpc
from tests.fuzzing import FUZZ, SHAPES, bounded, finite
from tests.processes import start_cloud

CLEAR = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED}


@pytest.fixture(scope="module")
def cloud(digits_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-cloud")
    daemon = start_cloud(digits_bundle[0], tmp, "--store", str(tmp / "store"))
    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.info['port']}")
    yield channel
    channel.close()
    assert daemon.stop() == 0


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
INPUTS = st.one_of(
    st.lists(FLOATS, min_size=64, max_size=64).map(
        lambda v: np.array(v, np.float32).reshape(1, 1, 8, 8)),
    st.integers(0, 255).map(lambda v: np.full((1, 1, 8, 8), v, np.uint8)),
    st.just(np.zeros((1, 1, 8, 8), np.float32)))


@st.composite
def infer_requests(draw) -> bytes:
    """InferRequest bytes: a valid request bent in one or more places, or noise."""
    req = make_request(draw(INPUTS), request_id=draw(st.text(max_size=40)))
    if draw(st.booleans()):
        req.input.dtype = draw(st.sampled_from(DTYPES) | st.text(max_size=12))
    if draw(st.booleans()):
        shape = draw(SHAPES)
        if isinstance(shape, list) and all(type(d) is int for d in shape):
            del req.input.shape[:]
            req.input.shape.extend([max(-(2**62), min(2**62, d)) for d in shape])
    if draw(st.booleans()):
        req.input.raw_data = draw(st.binary(max_size=600))
    if draw(st.booleans()):
        req.model_name = draw(st.text(max_size=20))
    req.agent_id = draw(st.text(max_size=20))
    raw = req.SerializeToString()
    return draw(st.sampled_from([raw, raw + draw(st.binary(max_size=16)),
                                 draw(st.binary(max_size=64))]))


@FUZZ
@given(raw=infer_requests())
def test_inference_answers_or_refuses_clearly(cloud, raw):
    infer = cloud.unary_unary("/cachenet.v1.InferenceService/Infer",
                              request_serializer=lambda b: b,
                              response_deserializer=pb.InferResponse.FromString)
    try:
        resp = infer(raw, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in CLEAR, (exc.code(), exc.details())
        assert bounded(exc.details()), exc.details()[:200]
        return
    assert resp.labels and all(finite(c) and 0 <= c <= 1 for c in resp.confidences)


AGENTS = st.sampled_from(["cam-1", "cam-2", "default"]) | st.text(max_size=140)
MAPS = st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=6)


@st.composite
def control_calls(draw) -> tuple[str, object]:
    rpc = draw(st.sampled_from(["Register", "Ack", "ReportStats", "Subscribe"]))
    agent = draw(AGENTS)
    if rpc == "Register":
        return rpc, cpb.RegisterRequest(agent_id=agent, token=draw(st.text(max_size=10)),
                                        device=draw(MAPS), bundle_name=draw(st.text(max_size=20)),
                                        bundle_version=draw(st.text(max_size=20)))
    if rpc == "Ack":
        return rpc, cpb.AckRequest(agent_id=agent, push_id=draw(st.text(max_size=20)),
                                   version=draw(st.text(max_size=20)),
                                   applied=draw(st.booleans()), reason=draw(st.text(max_size=40)))
    if rpc == "ReportStats":
        return rpc, cpb.StatsReport(
            agent_id=agent, requests=draw(st.integers(0, 2**40)),
            hits=draw(st.integers(0, 2**40)), bundle_version=draw(st.text(max_size=20)),
            class_histogram=draw(st.dictionaries(st.text(max_size=8), st.integers(0, 2**40),
                                                 max_size=6)),
            telemetry=draw(st.dictionaries(st.text(max_size=8), st.floats(width=64),
                                           max_size=6)))
    return rpc, cpb.SubscribeRequest(agent_id=agent, current_version=draw(st.text(max_size=20)))


@FUZZ
@given(call=control_calls())
def test_the_control_plane_answers_or_refuses_clearly(cloud, call):
    rpc, request = call
    stub = cpb_grpc.ControlServiceStub(cloud)
    try:
        if rpc == "Subscribe":  # a valid agent's subscription streams until its deadline
            for _ in stub.Subscribe(request, timeout=0.05):
                pass
        else:
            getattr(stub, rpc)(request, timeout=10)
    except grpc.RpcError as exc:
        expected = CLEAR | ({grpc.StatusCode.DEADLINE_EXCEEDED} if rpc == "Subscribe" else set())
        assert exc.code() in expected, (rpc, exc.code(), exc.details())
        assert bounded(exc.details()), exc.details()[:200]


def test_the_daemon_still_serves_after_the_fuzzing(cloud, digits_splits):
    stub = pb_grpc.InferenceServiceStub(cloud)
    resp = stub.Infer(make_request(digits_splits.test.x[:1]), timeout=10)
    assert len(resp.labels) == 1
