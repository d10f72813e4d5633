"""Start our daemons as real processes on loopback, port 0, waiting for their readiness."""

from __future__ import annotations

import time
from pathlib import Path

from cachenet.sim.daemon import Process
from cachenet.sim.load import Load  # noqa: F401 (the tests' load, from the emulation)

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
