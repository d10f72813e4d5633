"""Child daemons (cloud_server, edge_agent) started as processes that announce readiness.

Each child runs ``python -m MODULE ... --ready-file F`` in its own session and
writes ``F`` (JSON: its port or endpoint, its pid) once it serves; callers wait
on that file, not on the clock. :mod:`cachenet.sim.fleet` starts a whole fleet of
them (the cloud, the WAN, the agents); the tests and the benchmarks start single
daemons with this.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cachenet.exceptions import CachenetError


class Process:
    """A child daemon in its own session, readiness announced through a ready file."""

    def __init__(self, module: str, args: list[str], workdir: Path, *,
                 env: dict[str, str] | None = None, tag: str = "", nice: int = 0,
                 cwd: Path | None = None, cpus: set[int] | None = None) -> None:
        self.name = module
        self.ready_file = workdir / f"{module}{tag}.ready"
        self.log_path = workdir / f"{module}{tag}.log"
        self.ready_file.unlink(missing_ok=True)  # a previous run's file is not readiness
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.info: dict[str, Any] = {}
        argv = [sys.executable, "-m", module, *args, "--ready-file", str(self.ready_file)]
        if nice:  # nice(1) execs the daemon: the pid stays the daemon's
            argv = ["nice", "-n", str(nice), *argv]
        if cpus:  # taskset(1) execs it too: the CPUs it may run on (benchmarks pin)
            argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True, cwd=cwd)

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                self.info = json.loads(self.ready_file.read_text())
                return self.info
            if self.proc.poll() is not None:
                raise CachenetError(f"{self.name} exited with status {self.proc.returncode}: "
                                    f"{self.log_path.read_text()[-2000:]}")
            time.sleep(0.02)
        raise CachenetError(f"{self.name} was not ready within {timeout} s")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the process group, SIGKILL it after ``timeout``; the exit status."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL the process group at once, as a crash would; the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # gone already
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return self.proc.returncode
