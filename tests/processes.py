"""Start our daemons as real processes on loopback, port 0, waiting for their readiness."""

from __future__ import annotations

import time
from pathlib import Path

from cachenet.daemon import Process

SINGLE_THREAD = {"OMP_NUM_THREADS": "1"}  # two cores: keep test daemons from oversubscribing


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
    return start("edge_agent", ["--bundle", str(bundle), "--bind", "tcp://127.0.0.1:0", *extra],
                 tmp, env)
