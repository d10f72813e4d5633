"""Tiny diffusion models (random weights: the protocol, not the pictures, is under test)
and a real grpc.aio cloud server with a generator, on loopback port 0, in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from cachenet.diffusion.generate import Generator
from cachenet.diffusion.nets import DiffusionModel, build
from cloud_server.config import ServerConfig
from cloud_server.generate import GenerationService
from cloud_server.inference import ModelCard
from cloud_server.server import create_server

CLASSES = [f"class{i}" for i in range(10)]
#: The router L2C trains, as a checkpoint stores it, for a 2-block DiT and 4 ddim steps:
#: at the cache steps (odd ones, period 2) every block's attention is reused.
ROUTER = {"steps": 4, "period": 2, "sampler": "ddim", "betas": [[[0.0, 1.0]] * 2] * 4}


def tiny_models() -> dict[str, DiffusionModel]:
    torch.manual_seed(0)
    unet = build("unet", channels=16, mults=[1, 2], blocks=1, attn_at=[8], image_size=16)
    dit = build("dit", width=48, depth=2, heads=2, image_size=16, patch=4)
    routed = build("dit", width=48, depth=2, heads=2, image_size=16, patch=4)
    return {"unet": DiffusionModel(unet.eval(), classes=CLASSES),
            "dit": DiffusionModel(dit.eval(), classes=CLASSES),
            "routed": DiffusionModel(routed.eval(), classes=CLASSES, l2c=ROUTER)}


def classifier() -> tuple[ModelCard, object]:
    """The inference service the server needs all the same: a stand-in that answers zeros."""
    card = ModelCard(name="stub", version="0", input_shape=(1, 8, 8), input_dtype="float32",
                     classes=[str(i) for i in range(10)], device="cpu")
    return card, lambda x: np.zeros((len(x), 10), np.float32)


@dataclass
class Served:
    port: int
    service: GenerationService | None
    generator: Generator | None
    parts: object = None  # the server's ServerParts (control plane and all)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def serve(generator: Generator | None, *, classify=None, **kwargs: object) -> Iterator[Served]:
    """``create_server`` with ``generator`` running in a thread's event loop; the classifier
    answers zeros, or ``classify(x)`` (N x 1 x 8 x 8 -> N x 10 logits)."""
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        card, run_batch = classifier()
        run_batch = classify or run_batch
        server, port = await create_server(card, run_batch, ServerConfig(port=0, **kwargs),
                                           generator=generator)
        await server.start()
        stop = asyncio.Event()
        box.update(port=port, loop=asyncio.get_running_loop(), stop=stop,
                   service=server.cachenet.generation, parts=server.cachenet)
        ready.set()
        await stop.wait()
        if server.cachenet.generation is not None:
            server.cachenet.generation.close()  # as CloudServer.shutdown does
        await server.stop(0)
        await server.cachenet.batcher.stop()
        if server.cachenet.generation is not None:
            await server.cachenet.generation.stop()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # shown by the test, not lost in the thread
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="cloud", daemon=True)
    thread.start()
    assert ready.wait(30), "the server did not start"
    if "error" in box:
        raise AssertionError(f"the server did not start: {box['error']!r}")
    try:
        yield Served(box["port"], box["service"], generator,  # type: ignore[arg-type]
                     box["parts"])
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"
