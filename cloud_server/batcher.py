"""Dynamic batching: gather requests for up to ``max_queue_delay_us``, run them as one batch.

Knobs are named as in Triton: ``max_batch_size`` (inputs per batch) and
``max_queue_delay_us`` (how long the first request of a batch may wait for
others). The queue is bounded by ``max_queue_size`` requests; a request that
finds it full fails at once with :class:`~cachenet.exceptions.QueueFullError`
(the service answers RESOURCE_EXHAUSTED). The model runs in one worker thread,
off the event loop; requests whose caller has gone (deadline passed, cancelled)
are dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from cachenet.exceptions import QueueFullError

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    logits: np.ndarray  # this request's rows
    queue_us: int
    compute_us: int
    batch_size: int


@dataclass
class _Pending:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatcherStats:
    requests: int = 0
    inputs: int = 0
    batches: int = 0
    rejected_full: int = 0
    dropped_expired: int = 0
    batch_sizes: Counter = field(default_factory=Counter)

    def mean_batch_size(self) -> float:
        return self.inputs / self.batches if self.batches else 0.0


class DynamicBatcher:
    """Run ``run_batch(x)`` (N x ... -> N x K) on batches gathered from concurrent callers."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], *,
                 max_batch_size: int = 32, max_queue_delay_us: int = 2000,
                 max_queue_size: int = 1024) -> None:
        if max_batch_size < 1 or max_queue_delay_us < 0 or max_queue_size < 1:
            raise ValueError("max_batch_size and max_queue_size must be >= 1, "
                             "max_queue_delay_us >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_us = max_queue_delay_us
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(max_queue_size)
        self.stats = BatcherStats()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None
        self._busy = False
        self._carry: _Pending | None = None  # a request that did not fit the last batch
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    @property
    def idle(self) -> bool:
        return self.queue.empty() and self._carry is None and not self._busy

    async def infer(self, x: np.ndarray) -> BatchResult:
        """Queue ``x`` (n <= max_batch_size inputs) and wait for its rows of the batch output."""
        if len(x) > self.max_batch_size:
            raise ValueError(f"{len(x)} inputs exceed max_batch_size {self.max_batch_size}")
        item = _Pending(x, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.rejected_full += 1
            raise QueueFullError(f"request queue is full ({self.queue.maxsize} requests "
                                 "waiting); retry later") from None
        self.stats.requests += 1
        self._idle.clear()
        return await item.future

    async def _gather(self) -> list[_Pending]:
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            first = await self.queue.get()
        self._busy = True  # from here on, held items keep the batcher from being idle
        batch, count = [first], len(first.x)
        deadline = time.perf_counter() + self.max_queue_delay_us / 1e6
        while count < self.max_batch_size:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if count + len(nxt.x) > self.max_batch_size:
                # Does not fit: it opens the next batch instead.
                self._carry = nxt
                break
            batch.append(nxt)
            count += len(nxt.x)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            gathered = await self._gather()
            batch = [p for p in gathered if not p.future.done()]
            self.stats.dropped_expired += len(gathered) - len(batch)
            try:
                if batch:
                    await self._run(loop, batch)
            finally:
                self._busy = False
                if self.idle:
                    self._idle.set()

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        xs = np.concatenate([p.x for p in batch]) if len(batch) > 1 else batch[0].x
        started = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._executor, self.run_batch, xs)
        except Exception as exc:  # the model failed: every caller in the batch hears why
            log.exception("batch of %d failed", len(xs))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        compute_us = int((time.perf_counter() - started) * 1e6)
        self.stats.batches += 1
        self.stats.inputs += len(xs)
        self.stats.batch_sizes[len(xs)] += 1
        row = 0
        for p in batch:
            n = len(p.x)
            if not p.future.done():
                p.future.set_result(BatchResult(out[row:row + n],
                                                int((started - p.enqueued) * 1e6),
                                                compute_us, len(xs)))
            row += n

    async def stop(self) -> None:
        """Stop after the queued requests are answered."""
        if not self.idle:
            self._idle.clear()
            await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)
