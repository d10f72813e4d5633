"""The Open Inference Protocol front end: the same core as cachenet.v1, its own wire.

A real grpc.aio server on loopback; requests built from the generated messages. Every
bad request gets the status code and a message naming what is wrong, as on cachenet.v1,
and the server keeps serving.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cachenet.exceptions import CloudRejected
from cachenet.protocol import openinference as oi
from cachenet.protocol.client import CloudClient
from cachenet.protocol.oip import grpc_predict_v2_pb2 as pb
from cachenet.protocol.oip import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.generating import serve


def classify(x: np.ndarray) -> np.ndarray:
    """Logits that depend on the input: its first ten pixels."""
    return x.reshape(len(x), -1)[:, :10].astype(np.float32) * 3


@pytest.fixture(scope="module")
def cloud():
    with serve(None, classify=classify) as s, grpc.insecure_channel(s.target) as channel:
        yield s, pb_grpc.GRPCInferenceServiceStub(channel)


def inputs(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_health_and_metadata(cloud):
    _, stub = cloud
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="stub")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="stub", version="0")).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "cachenet"
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="stub"))
    assert (meta.name, list(meta.versions), meta.platform) == ("stub", ["0"], "pytorch")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 1, 8, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("logits", "FP32", [-1, 10]), ("label", "INT64", [-1]), ("confidence", "FP32", [-1])]
    code, details = code_of(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="other")))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown model 'other'" in details
    code, details = code_of(lambda: stub.ModelReady(pb.ModelReadyRequest(name="stub",
                                                                         version="9")))
    assert code == grpc.StatusCode.NOT_FOUND and "no version '9'" in details


def test_answers_match_cachenet_v1(cloud):
    served, _ = cloud
    x = inputs(3)
    with CloudClient(served.target) as v1, oi.OIPClient(served.target, "stub") as client:
        want = v1.infer(x, timeout=10)
        got = client.infer(x, timeout=10, request_id="r-1", agent_id="cam-1")
    np.testing.assert_array_equal(got.logits, want.logits)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.confidences, want.confidences, rtol=1e-6)
    assert (got.id, got.model_name, got.model_version) == ("r-1", "stub", "0")
    assert got.timings["batch_size"] >= 1 and got.timings["total_us"] > 0


def test_typed_contents_requested_outputs_and_levels(cloud):
    _, stub = cloud
    x = inputs(2)
    t = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[2, 1, 8, 8])
    t.contents.fp32_contents.extend(x.ravel().tolist())
    resp = stub.ModelInfer(pb.ModelInferRequest(
        model_name="stub", inputs=[t], outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(
            name="label")]))
    assert [o.name for o in resp.outputs] == ["label"]
    assert oi.output_array(resp, "label").tolist() == classify(x).argmax(1).tolist()


BAD = {
    "unknown model": (dict(model_name="nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
    "unknown version": (dict(model_version="7"), grpc.StatusCode.NOT_FOUND, "no version '7'"),
    "BYTES": (dict(datatype="BYTES"), grpc.StatusCode.INVALID_ARGUMENT,
              "datatype 'BYTES' is not one"),
    "input name": (dict(name="x"), grpc.StatusCode.INVALID_ARGUMENT,
                   "the model takes one input, 'input'"),
    "shape": (dict(shape=[3, 1, 8, 8]), grpc.StatusCode.INVALID_ARGUMENT, "tensor data is"),
    "model shape": (dict(shape=[2, 64], raw=inputs(2).tobytes()),
                    grpc.StatusCode.INVALID_ARGUMENT, "the model takes [N, 1, 8, 8]"),
    "dtype": (dict(datatype="INT32"), grpc.StatusCode.INVALID_ARGUMENT,
              "input dtype is int32"),
    "NaN": (dict(raw=np.full((2, 1, 8, 8), np.nan, np.float32).tobytes()),
            grpc.StatusCode.INVALID_ARGUMENT, "finite"),
    "output": (dict(outputs=["probs"]), grpc.StatusCode.INVALID_ARGUMENT, "unknown output"),
    "agent": (dict(params={"agent_id": oi.parameter("../x")}),
              grpc.StatusCode.INVALID_ARGUMENT, "agent id"),
    "param type": (dict(params={"spooled": oi.parameter("yes")}),
                   grpc.StatusCode.INVALID_ARGUMENT, "'spooled' must be a bool_param"),
    "two raw": (dict(extra_raw=True), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
}


def bad_request(model_name="stub", model_version="", datatype="FP32", name="input",
                shape=(2, 1, 8, 8), raw=None, outputs=(), params=None, extra_raw=False):
    raw = inputs(2).tobytes() if raw is None else raw
    return pb.ModelInferRequest(
        model_name=model_name, model_version=model_version, parameters=params or {},
        inputs=[pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype,
                                                      shape=list(shape))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs],
        raw_input_contents=[raw, raw] if extra_raw else [raw])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(cloud, case):
    served, stub = cloud
    fields, want_code, want = BAD[case]
    code, details = code_of(lambda: stub.ModelInfer(bad_request(**fields), timeout=10))
    assert code == want_code and want in details, (code, details)
    assert len(details) < 400
    with oi.OIPClient(served.target, "stub") as client:
        assert client.infer(inputs(1), timeout=10).labels.shape == (1,)


def test_typed_contents_are_checked_before_they_are_read(cloud):
    """A shape is checked before it is multiplied out (1,000 dims of 2^62 once took the
    server to an error it did not mean, 160,000 of them stalled it), and integers
    against their type's range (300 is no UINT8)."""
    _, stub = cloud

    def contents_request(shape, datatype="FP32", **values):
        t = pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype,
                                                  shape=shape)
        for field, v in values.items():
            getattr(t.contents, field).extend(v)
        return pb.ModelInferRequest(model_name="stub", inputs=[t])

    cases = [(contents_request([2**62] * 1000), "1 to 8 dimensions"),
             (contents_request([2**40, 2**40]), "over the limit"),
             (contents_request([1, 1, 8, 8], "UINT8", uint_contents=[300] * 64),
              "outside UINT8's range"),
             (contents_request([1, 1, 8, 8], fp32_contents=[0.5] * 63), "needs 64")]
    for request, want in cases:
        code, details = code_of(lambda r=request: stub.ModelInfer(r, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and want in details, details


def test_unknown_fields_are_refused_at_any_depth(cloud):
    _, stub = cloud
    request = bad_request()
    request.outputs.add(name="label")
    request.outputs.add(name="label")
    code, details = code_of(lambda: stub.ModelInfer(request, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "requested twice" in details
    request = bad_request()
    request.inputs[0].MergeFromString(b"\x98\x06\x01")  # field 99, varint 1
    code, details = code_of(lambda: stub.ModelInfer(request, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest.inputs[0] has unknown field number(s) [99]" in details


def test_undecodable_bytes_are_invalid_argument(cloud):
    served, _ = cloud
    with grpc.insecure_channel(served.target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        code, details = code_of(lambda: call(b"\xff\xff\xff", timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "does not decode" in details


def test_the_stream_answers_each_request_an_error_alone(cloud):
    _, stub = cloud
    x = inputs(1)
    good = [oi.infer_request(x, model_name="stub", request_id=f"g{i}") for i in range(5)]
    bad = bad_request(model_name="nope")
    bad.id = "bad"
    replies = list(stub.ModelStreamInfer(iter([*good[:2], bad, *good[2:]]), timeout=30))
    by_id = {r.infer_response.id: r for r in replies}
    assert sorted(by_id) == ["bad", "g0", "g1", "g2", "g3", "g4"]
    assert by_id["bad"].error_message.startswith("NOT_FOUND: unknown model")
    assert all(not by_id[f"g{i}"].error_message for i in range(5))
    assert oi.parse_answer(by_id["g0"].infer_response).labels.tolist() == \
        classify(x).argmax(1).tolist()


def test_the_client_maps_errors_to_cachenets(cloud):
    served, _ = cloud
    with oi.OIPClient(served.target, "missing") as client, \
            pytest.raises(CloudRejected, match="NOT_FOUND"):
        client.infer(inputs(1), timeout=10)


def test_both_protocols_count_into_one_core(cloud):
    served, _ = cloud
    before = dict(served.parts.core.counts)
    with CloudClient(served.target) as v1, oi.OIPClient(served.target, "stub") as client:
        v1.infer(inputs(1), timeout=10)
        client.infer(inputs(1), timeout=10)
    assert served.parts.core.counts["ok"] - before["ok"] == 2
    c = served.parts.core.counts  # every request received has one outcome, either way in
    assert c["received"] == sum(c[k] for k in ("ok", "invalid", "overloaded", "deadline",
                                               "error"))
