"""StreamInfer's backpressure: a stream holds at most its window of requests read and not
yet written back, so a client that stops reading stops the server reading, not its memory."""

from __future__ import annotations

import grpc
import numpy as np

from cachenet.protocol.client import make_request
from cachenet.protocol.v1 import inference_pb2_grpc as pb_grpc
from tests.generating import serve


def test_a_stream_holds_at_most_its_window_and_answers_everything():
    with serve(None) as s:
        service = s.parts.service
        service.holds.window = 4
        with grpc.insecure_channel(s.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            x = np.zeros((1, 1, 8, 8), np.float32)
            requests = [make_request(x, request_id=f"r{i}") for i in range(300)]
            replies = list(stub.StreamInfer(iter(requests), timeout=60))
        assert sorted(r.id for r in replies) == sorted(r.id for r in requests)
        assert all(r.response.labels == [0] for r in replies)
        assert 1 <= service.holds.max <= 4
        assert service.holds.now == 0
