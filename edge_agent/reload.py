"""Replace the cache model while the agent serves: verify, load, warm up, check, swap.

Everything slow happens on a worker thread, off the request path: the bundle is
hash-verified and its canaries replayed (:func:`cachenet.core.runtime.load_cache_model`),
the new ONNX Runtime session is warmed up, and its input must match the one
applications already send. Only then does the agent's ``model`` attribute
change, in one assignment; a request already running keeps the session it
started with. On any failure the old model stays and the reason is recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cachenet.core.manifest import read_manifest
from cachenet.core.runtime import CacheModel, load_cache_model
from cachenet.exceptions import CachenetError
from edge_agent.engine import equip

log = logging.getLogger(__name__)

WARMUP_RUNS = 3


def prepare(bundle: Path, current: CacheModel | None, *, precision: str,
            threads: int, check: Callable[[Path], None] | None = None) -> CacheModel:
    """Load ``bundle`` and make it ready to serve; raises :class:`CachenetError`.

    A bundle without a variant for ``precision`` (the cloud's partition models
    are fp32 only) is loaded in fp32.
    """
    if precision != "fp32" and precision not in read_manifest(bundle).data.get("variants", {}):
        log.info("%s has no %s variant: loading fp32", bundle, precision)
        precision = "fp32"
    if check is not None:
        check(bundle)  # what the agent trusts, before anything of it runs
    new = equip(load_cache_model(bundle, precision=precision, threads=threads), threads)
    if current is not None and (new.input_shape, new.dtype) != (current.input_shape,
                                                                 current.dtype):
        raise CachenetError(f"new bundle takes {new.input_shape} {new.dtype}, but the "
                            f"applications send {current.input_shape} {current.dtype}")
    x = np.zeros((1, *new.input_shape), dtype=new.dtype)
    for _ in range(WARMUP_RUNS):
        new.logits(x)
    return new


class Reloader:
    """Runs one reload at a time on a worker thread and reports the outcome."""

    def __init__(self, swap: Callable[[CacheModel], None],
                 check: Callable[[Path], None] | None = None) -> None:
        self.swap = swap
        self.check = check
        self.applied = 0
        self.rejected = 0
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one load-and-swap at a time, whoever asks

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, bundle: Path, current: CacheModel | None, *, precision: str,
              threads: int) -> bool:
        """Begin loading ``bundle``; False when a reload is already running."""
        if self.busy:
            return False
        self._thread = threading.Thread(
            target=self._run, args=(bundle, current, precision, threads), name="reload",
            daemon=True)
        self._thread.start()
        return True

    def _run(self, bundle: Path, current: CacheModel | None, precision: str,
             threads: int) -> None:
        self.load_and_swap(bundle, current, precision=precision, threads=threads)

    def load_and_swap(self, bundle: Path, current: CacheModel | None, *, precision: str,
                      threads: int) -> str | None:
        """Prepare ``bundle`` and swap it in, on the calling thread; the error, or None."""
        with self._lock:
            t0 = time.perf_counter()
            try:
                new = prepare(bundle, current, precision=precision, threads=threads,
                              check=self.check)
            except Exception as exc:  # CachenetError above all; anything else is refused too
                self.rejected += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("reload of %s rejected, keeping version %s: %s", bundle,
                          current.version if current else None, self.last_error)
                return self.last_error
            self.swap(new)
            self.applied += 1
            log.info("now serving %s version %s (loaded and checked in %.0f ms)",
                     new.manifest.name, new.version, (time.perf_counter() - t0) * 1e3)
            return None

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def snapshot(self) -> dict[str, object]:
        return {"applied": self.applied, "rejected": self.rejected,
                "last_error": self.last_error, "in_progress": self.busy}
