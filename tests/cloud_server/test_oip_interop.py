"""Clients no one here wrote: Triton's ``tritonclient.grpc``, and one that knows only reflection.

The cloud runs as a real process with a trained digits bundle; tritonclient runs in its
own process (``triton_probe.py``: its messages and ours share the proto package). It
must read the server's health and metadata, and get the answers cachenet.v1 gives for
the same inputs, by ModelInfer and by the stream. Its messages' field numbers must be
ours, field for field.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2

from cachenet.protocol.client import CloudClient
from cachenet.protocol.oip import grpc_predict_v2_pb2
from tests.processes import server_atol, start_cloud

PROBE = Path(__file__).with_name("triton_probe.py")


def our_descriptors(names: set[str], methods: set[str]) -> dict:
    fd = descriptor_pb2.FileDescriptorProto()
    grpc_predict_v2_pb2.DESCRIPTOR.CopyToProto(fd)

    def fields(m, prefix=""):
        out = {prefix + m.name: sorted([f.name, f.number, f.type, f.label] for f in m.field)}
        for n in m.nested_type:
            out.update(fields(n, prefix + m.name + "."))
        return out

    msgs = {}
    for m in fd.message_type:
        if m.name in names:
            msgs.update(fields(m))
    return {"package": fd.package, "messages": msgs,
            "methods": {x.name: [x.input_type, x.output_type, x.client_streaming,
                                 x.server_streaming]
                        for s in fd.service for x in s.method if x.name in methods}}


def test_tritonclient_gets_cachenet_v1s_answers(digits_bundle, digits_splits, tmp_path):
    x = digits_splits.test.x[:6].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cloud = start_cloud(digits_bundle[0], tmp_path)
    target = f"127.0.0.1:{cloud.info['port']}"
    try:
        with CloudClient(target) as v1:
            want = v1.infer(x, timeout=30)
            model = v1.model_info(timeout=10)
        proc = subprocess.run([sys.executable, str(PROBE), target, model.name,
                               str(tmp_path / "x.npy")], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout)
    finally:
        assert cloud.stop() == 0
    assert (got["live"], got["ready"], got["model_ready"], got["server"]) == (
        True, True, True, "cachenet")
    meta = got["metadata"]
    assert meta["name"] == model.name and meta["versions"] == [model.version]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32",
                               "shape": [str(d) for d in model.input_shape]}]
    infer = got["infer"]
    assert infer["id"] == "probe-1"
    np.testing.assert_allclose(np.array(infer["logits"]), want.logits, atol=server_atol())
    assert infer["label"] == want.labels.tolist()
    np.testing.assert_allclose(infer["confidence"], want.confidences, atol=1e-4)
    assert got["stream"] == {f"s{i}": [int(label)] for i, label in enumerate(want.labels)}
    assert got["bad"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "the model takes [N, 1, 8, 8]" in got["bad"]["message"]
    theirs = got["descriptors"]
    ours = our_descriptors(set(n.split(".")[0] for n in theirs["messages"]),
                           set(theirs["methods"]))
    assert ours == theirs


def test_a_client_that_knows_only_reflection(digits_splits):
    """As grpcurl does: find the service by reflection, build its messages from the
    descriptors the server sends, call it with JSON, and read the answer."""
    import base64

    import grpc
    from google.protobuf import json_format, message_factory
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    from tests.generating import serve

    def classify(x):
        return x.reshape(len(x), -1)[:, :10].astype(np.float32)

    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    with serve(None, classify=classify) as cloud, grpc.insecure_channel(cloud.target) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        assert "inference.GRPCInferenceService" in db.get_services()
        service = DescriptorPool(db).FindServiceByName("inference.GRPCInferenceService")

        def call(method: str, body: dict) -> dict:
            m = service.FindMethodByName(method)
            request_cls = message_factory.GetMessageClass(m.input_type)
            response_cls = message_factory.GetMessageClass(m.output_type)
            stub = ch.unary_unary(f"/{service.full_name}/{method}",
                                  request_serializer=request_cls.SerializeToString,
                                  response_deserializer=response_cls.FromString)
            reply = stub(json_format.ParseDict(body, request_cls()), timeout=10)
            return json_format.MessageToDict(reply)

        assert call("ServerReady", {}) == {"ready": True}
        meta = call("ModelMetadata", {"name": "stub"})
        assert meta["inputs"][0]["shape"] == ["-1", "1", "8", "8"]
        reply = call("ModelInfer", {
            "model_name": "stub", "id": "json-1",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8],
                        "contents": {"fp32_contents": x.ravel().tolist()}}],
            "outputs": [{"name": "logits"}, {"name": "label"}]})
        with CloudClient(cloud.target) as v1:
            want = v1.infer(x, timeout=10)
    assert reply["id"] == "json-1" and [o["name"] for o in reply["outputs"]] == ["logits",
                                                                                  "label"]
    raw = [base64.b64decode(r) for r in reply["rawOutputContents"]]
    np.testing.assert_array_equal(np.frombuffer(raw[0], "<f4").reshape(2, 10), want.logits)
    assert np.frombuffer(raw[1], "<i8").tolist() == want.labels.tolist()
