"""Batch-1 latency of the cache model under ONNX Runtime and the full model under torch.

Both are measured in the same process, one after the other, on the same
inputs, so their ratio means something on whatever machine runs it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _median_us(fn, inputs: list, repeats: int) -> float:
    for x in inputs[:5]:  # warm-up
        fn(x)
    samples = []
    for i in range(repeats):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter_ns()
        fn(x)
        samples.append(time.perf_counter_ns() - t0)
    return float(np.median(samples)) / 1e3


def onnx_batch1_us(path: Path, x: np.ndarray, *, repeats: int = 200, threads: int = 1) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    inputs = [np.ascontiguousarray(x[i:i + 1]) for i in range(min(len(x), 64))]
    return _median_us(lambda b: sess.run(None, {name: b}), inputs, repeats)


@torch.inference_mode()
def torch_batch1_us(model: nn.Module, x: np.ndarray, *, repeats: int = 100,
                    threads: int | None = None) -> float:
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model.eval()
        inputs = [torch.from_numpy(x[i:i + 1]) for i in range(min(len(x), 64))]
        return _median_us(model, inputs, repeats)
    finally:
        torch.set_num_threads(prev)
