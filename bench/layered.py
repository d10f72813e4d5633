"""The suite's ``cachenet_layercache`` system: a layered bundle's cloud and fresh agents.

A cloud server runs the bundle's full model with its layer caches (``--layer-cache``)
behind its own emulated WAN; every run gets a fresh agent of the same bundle,
whose layer caches start as the bundle ships them and learn the cloud's answers
to its escalations as the run goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from cachenet.sim.daemon import Process
from cachenet.sim.wan import LinkProfile, ProxyThread


class LayeredCloud:
    def __init__(self, stack: ExitStack, *, bundle: Path, work: Path,
                 deadline_ms: float) -> None:
        self.bundle, self.work, self.deadline_ms = bundle, work, deadline_ms
        self.cloud = Process("cloud_server", ["--bundle", str(bundle), "--port", "0",
                                              "--layer-cache", "--log-level", "WARNING"],
                             work, tag="-layered")
        stack.callback(self.cloud.stop)
        self.proxy = stack.enter_context(ProxyThread(("127.0.0.1", self.cloud.wait_ready()
                                                      ["port"]), LinkProfile()))

    def configure(self, profile: LinkProfile) -> None:
        self.proxy.configure(profile)

    def agent(self, agent_id: str):
        """A fresh agent of the layered bundle: (its client, its psutil process)."""
        return fresh_agent(self.bundle, self.proxy.port, self.work, agent_id, self.deadline_ms)


@contextmanager
def fresh_agent(bundle: Path, port: int, work: Path, agent_id: str, deadline_ms: float,
                env: dict[str, str] | None = None) -> Iterator[tuple[Any, Any]]:
    """An agent process of ``bundle`` escalating to 127.0.0.1:``port``: (its client, its
    psutil process); stopped on leaving."""
    import psutil

    from edge_agent.client import EdgeClient

    edge = Process("edge_agent", [
        "--bundle", str(bundle), "--bind", "tcp://127.0.0.1:0", "--agent-id", agent_id,
        "--cloud", f"127.0.0.1:{port}", "--deadline-ms", str(deadline_ms),
        "--log-level", "WARNING", "--no-spool"], work, tag=f"-{agent_id}",
        env={"OMP_NUM_THREADS": "1", **(env or {})})
    try:
        with EdgeClient(edge.wait_ready()["endpoint"]) as client:
            yield client, psutil.Process(edge.proc.pid)
    finally:
        edge.stop()
