"""The cloud server as a real process on loopback: service, health, reflection, errors."""

from __future__ import annotations

import concurrent.futures as cf
import time

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cachenet.exceptions import CloudOverloaded, CloudRejected, CloudTimeout
from cachenet.protocol.client import CloudClient, make_request
from cachenet.protocol.v1 import inference_pb2 as pb
from cloud_server import load_full_model, pick_device
from tests.processes import server_atol, start_cloud


@pytest.fixture(scope="module")
def cloud(digits_bundle, tmp_path_factory):
    daemon = start_cloud(digits_bundle[0], tmp_path_factory.mktemp("cloud"),
                         "--max-queue-delay-us", "5000")
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture
def client(cloud):
    with CloudClient(f"127.0.0.1:{cloud.info['port']}") as c:
        yield c


def test_health_reflection_and_model_info(cloud, client, digits_splits):
    channel = client.channel
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "cachenet.v1.InferenceService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert "cachenet.v1.InferenceService" in names and "grpc.health.v1.Health" in names
    info = client.model_info(timeout=5)
    assert list(info.input_shape) == [-1, 1, 8, 8] and info.input_dtype == "float32"
    assert list(info.classes) == digits_splits.classes
    assert info.device.split(":")[0] == pick_device().type  # CUDA where there is one
    # What it takes beyond a plain request, declared: clients ask, never guess from errors.
    assert sorted(info.capabilities) == ["spooled", "uint8-levels"]
    assert info.input_scale == pytest.approx(1 / 16)  # the digits' 17 levels


def test_answers_match_the_full_model(client, digits_bundle, digits_splits):
    model, _ = load_full_model(digits_bundle[0], device="cpu")
    x = digits_splits.test.x[:16]
    answer = client.infer(x, timeout=10, request_id="batch-16")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(answer.logits, expected, atol=server_atol())
    assert answer.id == "batch-16" and answer.labels.tolist() == expected.argmax(1).tolist()
    assert answer.model_name == "resnet20" and len(answer.model_version) == 12
    assert answer.timings["batch_size"] >= 16 and answer.timings["total_us"] > 0


def test_camera_frames_may_come_as_their_uint8_levels(client, digits_splits):
    """An input made of 8-bit pixels travels as those levels, 4x smaller, and is answered
    exactly as the float32 input it stands for."""
    from cachenet.core import tensors

    x = digits_splits.test.x[:8]
    levels = tensors.to_levels(x, 1 / 16)  # the digits' pixel scale
    assert levels is not None and levels.dtype == np.uint8 and levels.nbytes * 4 == x.nbytes
    as_float = client.infer(x, timeout=10)
    as_levels = client.infer(levels, timeout=10)
    np.testing.assert_array_equal(as_levels.logits, as_float.logits)
    with pytest.raises(CloudRejected, match="dtype"):
        client.infer(levels.astype(np.int32), timeout=10)


def variant(good: pb.InferRequest, edit) -> pb.InferRequest:
    req = pb.InferRequest()
    req.CopyFrom(good)
    edit(req)
    return req


def bad_requests(x: np.ndarray) -> dict[str, tuple[pb.InferRequest | bytes, str]]:
    good = make_request(x[:1])
    short = variant(good, lambda r: setattr(r.input, "raw_data", b"\0" * 10))
    f64 = make_request(x[:1].astype(np.float64))
    shape = make_request(np.zeros((1, 3, 8, 8), np.float32))
    nan = make_request(np.full((1, 1, 8, 8), np.nan, np.float32))
    overflow = make_request(np.full((1, 1, 8, 8), 3e38, np.float32))
    long_dtype = variant(good, lambda r: setattr(r.input, "dtype", "f" * 100_000))
    big = make_request(np.zeros((33, 1, 8, 8), np.float32))
    huge = variant(good, lambda r: r.input.shape.__setitem__(slice(None), [1 << 20, 1, 64, 64]))
    named = variant(good, lambda r: setattr(r, "model_name", "gpt"))
    empty = pb.InferRequest(id="no-input")
    dtype = variant(good, lambda r: setattr(r.input, "dtype", "complex64"))
    agent = variant(good, lambda r: setattr(r, "agent_id", "../../etc"))
    return {
        "wrong dtype": (f64, "dtype is float64, the model takes float32"),
        "wrong shape": (shape, "input shape is [1, 3, 8, 8]"),
        "short data": (short, "tensor data is 10 bytes"),
        "oversize batch": (big, "batch of 33 inputs"),
        "oversize tensor": (huge, "over the limit"),
        "NaN": (nan, "NaN"),
        "overflowing values": (overflow, "output for input(s) [0] is not finite"),
        "long dtype": (long_dtype, "unsupported dtype 'ffff"),
        "unknown model": (named, "unknown model 'gpt'"),
        "no input": (empty, "no input tensor"),
        "unsupported dtype": (dtype, "unsupported dtype 'complex64'"),
        "bad agent id": (agent, "agent id '../../etc' must be"),
        "unknown field": (good.SerializeToString() + b"\xa0\x06\x01", "unknown field number"),
    }


def test_malformed_requests_get_invalid_argument_and_the_server_keeps_serving(
        cloud, client, digits_splits):
    channel = client.channel
    raw_infer = channel.unary_unary("/cachenet.v1.InferenceService/Infer",
                                    request_serializer=lambda b: b,
                                    response_deserializer=pb.InferResponse.FromString)
    for name, (request, message) in bad_requests(digits_splits.test.x).items():
        with pytest.raises(grpc.RpcError) as err:
            if isinstance(request, bytes):
                raw_infer(request, timeout=5)
            else:
                client.stub.Infer(request, timeout=5)
        expected = (grpc.StatusCode.NOT_FOUND if name == "unknown model"
                    else grpc.StatusCode.INVALID_ARGUMENT)
        assert err.value.code() == expected, name
        assert message in err.value.details(), (name, err.value.details())
        assert len(err.value.details()) < 400, (name, "errors quote an excerpt only")
    with pytest.raises(grpc.RpcError) as err:  # garbage bytes that do not parse at all
        raw_infer(b"\xff\xff\xff garbage", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not decode as cachenet.v1.InferRequest" in err.value.details()
    raw_info = channel.unary_unary("/cachenet.v1.InferenceService/GetModelInfo",
                                   request_serializer=lambda b: b,
                                   response_deserializer=pb.ModelInfo.FromString)
    with pytest.raises(grpc.RpcError) as err:
        raw_info(b"\xff\xff\xff garbage", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not decode as cachenet.v1.ModelInfoRequest" in err.value.details()
    assert client.infer(digits_splits.test.x[:1], timeout=5).labels.shape == (1,)


def test_errors_map_to_our_exceptions_with_their_details(client, digits_splits):
    with pytest.raises(CloudRejected, match="INVALID_ARGUMENT") as err:
        client.infer(np.zeros((1, 2, 8, 8), np.float32), timeout=5)
    # The server's structured details travel with the status: what a caller acts on.
    assert (err.value.code, err.value.reason, err.value.field) == (
        "INVALID_ARGUMENT", "input_shape", "input.shape")
    assert not err.value.retryable
    with pytest.raises(CloudRejected) as err:
        client.infer(digits_splits.test.x[:1], timeout=5, model_name="another")
    assert (err.value.code, err.value.reason, err.value.field) == (
        "NOT_FOUND", "unknown_model", "model_name")
    with pytest.raises(CloudRejected) as err:
        client.infer(digits_splits.test.x[:1].astype(np.float64), timeout=5)
    assert (err.value.reason, err.value.field) == ("input_dtype", "input.dtype")
    with pytest.raises(CloudTimeout) as timeout:
        client.infer(digits_splits.test.x[:1], timeout=1e-4)
    assert timeout.value.retryable


def test_stream_answers_each_request_and_survives_bad_ones(client, digits_splits):
    x = digits_splits.test.x
    requests = [make_request(x[i:i + 1], request_id=f"s{i}") for i in range(20)]
    requests.insert(5, make_request(np.zeros((1, 3, 8, 8), np.float32), request_id="bad"))
    replies = {r.id: r for r in client.stub.StreamInfer(iter(requests), timeout=30)}
    assert set(replies) == {r.id for r in requests}
    assert replies["bad"].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "input shape" in replies["bad"].error_message
    assert (replies["bad"].error_reason, replies["bad"].error_field) == ("input_shape",
                                                                      "input.shape")
    assert all(replies[f"s{i}"].response.labels for i in range(20))


def test_dynamic_batching_groups_concurrent_requests(cloud, digits_splits):
    x = digits_splits.test.x
    target = f"127.0.0.1:{cloud.info['port']}"
    with CloudClient(target) as c, cf.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: c.infer(x[i:i + 1], timeout=30), range(96)))
    sizes = [a.timings["batch_size"] for a in answers]
    assert max(sizes) > 1, sizes


def test_full_queue_answers_resource_exhausted(digits_bundle, digits_splits, tmp_path):
    daemon = start_cloud(digits_bundle[0], tmp_path, "--max-queue-size", "1",
                         "--max-batch-size", "1", "--max-queue-delay-us", "0")
    try:
        x = digits_splits.test.x
        outcomes = []

        def call(i):
            try:
                c.infer(x[i % 50:i % 50 + 1], timeout=30)
                return "ok"
            except CloudOverloaded as exc:
                assert "queue is full" in str(exc)
                return "overloaded"

        with CloudClient(f"127.0.0.1:{daemon.info['port']}") as c, \
                cf.ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(call, range(200)))
            assert "overloaded" in outcomes and "ok" in outcomes
            assert c.infer(x[:1], timeout=30).labels.shape == (1,)  # still serving
    finally:
        assert daemon.stop() == 0


def test_sigterm_drains_in_flight_requests(digits_bundle, digits_splits, tmp_path):
    daemon = start_cloud(digits_bundle[0], tmp_path, "--max-queue-delay-us", "300000",
                         "--log-level", "DEBUG")
    x = digits_splits.test.x
    target = f"127.0.0.1:{daemon.info['port']}"
    with CloudClient(target) as c, cf.ThreadPoolExecutor(8) as pool:
        c.wait_ready(10)
        futures = [pool.submit(c.infer, x[i:i + 1], timeout=30, request_id=f"drain-{i}")
                   for i in range(8)]
        # Wait until the server holds all eight (its debug log says so), then stop it.
        deadline = time.monotonic() + 30
        while daemon.log_path.read_text().count("queued request drain-") < 8:
            assert time.monotonic() < deadline, "requests never reached the server"
            time.sleep(0.01)
        code = daemon.stop()
        results = [f.result() for f in futures]
    assert code == 0
    assert all(r.labels.shape == (1,) for r in results)
    log = daemon.log_path.read_text()
    assert "draining" in log and "stopped" in log
    assert "'received': 8, 'ok': 8" in log
