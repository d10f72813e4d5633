"""A burst beyond the queue: every call reaches the service and gets an answer or
RESOURCE_EXHAUSTED; none is cancelled unseen by gRPC's own pending-call limit."""

from __future__ import annotations

import asyncio
import collections
import time

import grpc
import numpy as np

import tests.generating as generating
from cachenet.protocol.client import CHANNEL_OPTIONS, make_request
from cachenet.protocol.v1 import inference_pb2_grpc as pb_grpc


def slow_zeros(x: np.ndarray) -> np.ndarray:
    time.sleep(0.005)  # a model that takes a while: the queue fills
    return np.zeros((len(x), 10), np.float32)


async def burst(target: str, n: int) -> collections.Counter:
    codes: collections.Counter = collections.Counter()
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        x = np.zeros((1, 1, 8, 8), np.float32)

        async def one() -> None:
            try:
                await stub.Infer(make_request(x), timeout=60)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1

        await asyncio.gather(*[one() for _ in range(n)])
    return codes


def test_a_burst_past_the_queue_is_answered_or_refused_never_cancelled(monkeypatch):
    card, _ = generating.classifier()
    monkeypatch.setattr(generating, "classifier", lambda: (card, slow_zeros))
    with generating.serve(None, max_queue_size=16, max_batch_size=4) as s:
        codes = asyncio.run(burst(s.target, 2000))
        counts = s.parts.service.counts
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] >= 1 and sum(codes.values()) == 2000
    assert counts["received"] == 2000  # every call reached the service
