"""Drive an Open Inference Protocol server with Triton's own client, ``tritonclient.grpc``.

Run as a separate process (``python tests/cloud_server/triton_probe.py TARGET MODEL X.npy``):
tritonclient's generated messages and cachenet's share the proto package ``inference``, and
protobuf refuses two definitions of one message in a process. Prints one JSON object:
what the client read of the server (liveness, readiness, metadata), its answers to the
inputs by ModelInfer and by the stream, the error a bad request got, and the field
numbers of tritonclient's messages (which the test compares with ours).
"""

from __future__ import annotations

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as tc
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

MESSAGES = ("ServerLiveResponse", "ServerReadyResponse", "ModelReadyRequest",
            "ModelReadyResponse", "ServerMetadataResponse", "ModelMetadataRequest",
            "ModelMetadataResponse", "ModelInferRequest", "ModelInferResponse",
            "ModelStreamInferResponse", "InferParameter", "InferTensorContents")
METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
           "ModelInfer", "ModelStreamInfer")


def fields(m: descriptor_pb2.DescriptorProto, prefix: str = "") -> dict[str, list]:
    out = {prefix + m.name: sorted([f.name, f.number, f.type, f.label] for f in m.field)}
    for n in m.nested_type:
        out.update(fields(n, prefix + m.name + "."))
    return out


def descriptors() -> dict:
    fd = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(fd)
    msgs = {}
    for m in fd.message_type:
        if m.name in MESSAGES:
            msgs.update(fields(m))
    methods = {x.name: [x.input_type, x.output_type, x.client_streaming, x.server_streaming]
               for s in fd.service for x in s.method if x.name in METHODS}
    return {"package": fd.package, "messages": msgs, "methods": methods}


def infer_input(x: np.ndarray) -> tc.InferInput:
    i = tc.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def main() -> None:
    target, model, path = sys.argv[1:4]
    x = np.load(path)
    client = tc.InferenceServerClient(target)
    meta = client.get_model_metadata(model, as_json=True)
    out: dict = {"live": client.is_server_live(), "ready": client.is_server_ready(),
                 "model_ready": client.is_model_ready(model),
                 "server": client.get_server_metadata(as_json=True)["name"],
                 "metadata": meta, "descriptors": descriptors()}
    outputs = [tc.InferRequestedOutput(n) for n in ("logits", "label", "confidence")]
    r = client.infer(model, [infer_input(x)], outputs=outputs, request_id="probe-1")
    out["infer"] = {"id": r.get_response().id, "logits": r.as_numpy("logits").tolist(),
                    "label": r.as_numpy("label").tolist(),
                    "confidence": r.as_numpy("confidence").tolist()}
    try:
        client.infer(model, [infer_input(x[:, :, :4])])
        out["bad"] = "accepted"
    except InferenceServerException as exc:
        out["bad"] = {"status": exc.status(), "message": exc.message()}
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(len(x)):
        client.async_stream_infer(model, [infer_input(x[i:i + 1])], request_id=f"s{i}")
    stream = {}
    for _ in range(len(x)):
        result, error = answers.get(timeout=30)
        assert error is None, error
        stream[result.get_response().id] = result.as_numpy("label").tolist()
    client.stop_stream()
    out["stream"] = stream
    client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
