"""Start our daemons as real processes on loopback, port 0, waiting for their readiness."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import numpy as np

from cachenet.sim.daemon import Process

SINGLE_THREAD = {"OMP_NUM_THREADS": "1"}  # two cores: keep test daemons from oversubscribing


def server_atol() -> float:
    """How closely a cloud server's logits match the same model run here on the CPU: to
    float rounding on a CPU; on a GPU (which the server picks when there is one) its
    convolutions may use TF32, measured to differ by up to 9e-4 on an H200."""
    import torch

    return 2e-3 if torch.cuda.is_available() else 1e-4


def wait_until(predicate, timeout: float = 60.0) -> None:
    """Poll ``predicate`` (a condition, not the clock) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def start(module: str, args: list[str], tmp: Path, env: dict[str, str] | None = None
          ) -> Process:
    proc = Process(module, args, tmp, env={**SINGLE_THREAD, **(env or {})},
                   tag=f"-{time.monotonic_ns()}")
    proc.wait_ready(60)
    return proc


def start_cloud(bundle: Path, tmp: Path, *extra: str) -> Process:
    return start("cloud_server", ["--bundle", str(bundle), "--port", "0", *extra], tmp)


def start_edge(bundle: Path, tmp: Path, *extra: str, env: dict[str, str] | None = None
               ) -> Process:
    """An agent; its spool in ``tmp`` unless ``extra`` names one, so no test sees what
    another spooled beside a shared bundle."""
    spool = ([] if "--spool-dir" in extra
             else ["--spool-dir", str(tmp / f"spool-{time.monotonic_ns()}")])
    return start("edge_agent", ["--bundle", str(bundle), "--bind", "tcp://127.0.0.1:0",
                                *spool, *extra], tmp, env)


class Load:
    """Requests to an agent, one after another on a thread, until stopped; counts outcomes.

    ``with Load(endpoint, x, policy=...) as load:`` then read ``load.sent``, ``ok``,
    ``failed``, ``sources`` and ``versions`` (the cache versions that answered).
    """

    def __init__(self, endpoint: str, x: np.ndarray, *, policy: str = "auto",
                 timeout: float = 10.0) -> None:
        self.endpoint, self.x, self.policy, self.timeout = endpoint, x, policy, timeout
        self.sent = self.ok = self.failed = 0
        self.sources: collections.Counter[str] = collections.Counter()
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        from edge_agent.client import EdgeClient

        with EdgeClient(self.endpoint) as c:
            while not self._stop.is_set():
                self.sent += 1
                try:
                    answer = c.infer(self.x[self.sent % len(self.x)], timeout=self.timeout,
                                     policy=self.policy)
                except Exception:
                    self.failed += 1
                    continue
                self.ok += 1
                self.sources[answer["source"]] += 1
                self.versions.add(answer["versions"]["cache"])

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
