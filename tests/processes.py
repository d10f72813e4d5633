"""Start our daemons as real processes on loopback, port 0, and wait for their readiness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class Daemon:
    def __init__(self, args: list[str], ready_file: Path, log: Path) -> None:
        self.ready_file = ready_file
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", *args, "--ready-file",
                                      str(ready_file)], stdout=log.open("wb"),
                                     stderr=subprocess.STDOUT, env=env)
        self.info = self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                return json.loads(self.ready_file.read_text())
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args[2]} exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            time.sleep(0.02)  # polling a condition (the ready file), not a fixed wait
        raise TimeoutError(f"{self.proc.args[2]} not ready in {timeout} s:\n"
                           f"{self.log.read_text()[-3000:]}")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_cloud(bundle: Path, tmp: Path, *extra: str) -> Daemon:
    name = f"cloud-{time.monotonic_ns()}"
    return Daemon(["cloud_server", "--bundle", str(bundle), "--port", "0", *extra],
                  tmp / f"{name}.ready", tmp / f"{name}.log")


def start_edge(bundle: Path, tmp: Path, *extra: str) -> Daemon:
    name = f"edge-{time.monotonic_ns()}"
    return Daemon(["edge_agent", "--bundle", str(bundle), "--bind", "tcp://127.0.0.1:0",
                   *extra], tmp / f"{name}.ready", tmp / f"{name}.log")
