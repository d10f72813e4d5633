"""A fleet on one machine: the cloud server, the emulated WAN and N edge agents as processes.

The one harness for everything that runs the whole system on loopback: the demos
(``cachenet demo``, ``--scenario drift``), the benchmarks and the tests::

    config = FleetConfig(bundle, agents=2, link=LinkProfile.from_rtt(40), deadline_ms=250)
    with Fleet(config) as fleet, fleet.agents[0].client() as client:
        client.infer(x)                        # through agent 1, the WAN, the cloud
        with fleet.agent("fresh") as a:        # a new agent of the same cloud and WAN
            ...
        fleet.configure(LinkProfile.from_rtt(2))   # another network, same processes

Starting, in order: ``cloud_server`` on port 0, waited for through its ready file
(and, with ``wait_for``, until those health services are SERVING, e.g. the
specialiser once it has labelled its replay data); the WAN proxy
(:class:`~cachenet.sim.wan.ProxyThread`) in front of it, unless ``link`` is None;
then the agents, each ``edge_agent`` escalating to the WAN's port, with an id of
its own and its own state directory (pushed bundles, the spool) under the work
directory, each waited for through its ready file. Nothing waits on the clock.

Leaving the ``with`` (or :meth:`Fleet.close`), interrupted or not, stops the
agents, the proxy and the cloud, in that order, each process with its whole
process group, and removes the work directory if the fleet made it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cachenet.exceptions import CachenetError
from cachenet.sim.daemon import Process
from cachenet.sim.wan import LinkProfile, ProxyThread

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class FleetConfig:
    """What a :class:`Fleet` starts.

    ``cloud_args`` and ``agent_args`` are flags added to the daemons' own
    (``--bundle``, ``--port 0``; ``--bind``, ``--cloud``, ``--agent-id``,
    ``--state-dir``); ``env`` goes to every process, ``agent_env`` to agents only.
    ``link`` None runs without a WAN: agents dial the cloud directly. ``name``
    tags the log and ready files, so that several fleets may share a ``workdir``
    (None: a temporary one, removed on leaving).
    """

    bundle: Path
    agents: int = 1
    link: LinkProfile | None = field(default_factory=LinkProfile)
    cloud_args: tuple[str, ...] = ()
    agent_args: tuple[str, ...] = ()
    #: The agents' bundle, if not ``bundle`` (a signed copy, say).
    agent_bundle: Path | None = None
    #: ``--deadline-ms`` for every agent (None: the agent's default).
    deadline_ms: float | None = None
    #: The first agents' ids (the rest: ``agent-<n>``).
    agent_ids: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    agent_env: Mapping[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    name: str = ""
    #: nice(1) for the cloud, so that what it trains yields to what is measured.
    cloud_nice: int = 0
    #: Health services (standard gRPC health checking) the cloud must report SERVING
    #: before the WAN opens and agents start.
    wait_for: tuple[str, ...] = ()
    #: Bound on each wait for readiness (a guard against a hang, not a schedule).
    ready_timeout_s: float = 120.0


@dataclass
class Agent:
    """A running agent of a fleet: its id, its process and the endpoint it serves."""

    id: str
    process: Process
    endpoint: str

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def client(self) -> Any:
        """A new :class:`edge_agent.client.EdgeClient` on this agent (close it, or use
        ``with``)."""
        from edge_agent.client import EdgeClient

        return EdgeClient(self.endpoint)

    def psutil(self) -> Any:
        """The agent's :class:`psutil.Process` (CPU times, memory)."""
        import psutil

        return psutil.Process(self.pid)

    def stats(self) -> dict[str, Any]:
        """The agent's ``stats`` reply, over a client of its own."""
        with self.client() as client:
            return client.stats()


class Fleet:
    """The cloud, the WAN and the agents of :class:`FleetConfig`; see the module docstring."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.workdir: Path | None = None
        self.cloud: Process | None = None
        self.cloud_port: int | None = None
        self.proxy: ProxyThread | None = None
        self.agents: list[Agent] = []
        self._stack: ExitStack | None = None
        self._clouds = 0  # clouds started: tags the logs of restarts
        self._agents = 0  # agents started: numbers default ids

    # -- lifecycle -------------------------------------------------------
    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> Fleet:
        """Start the cloud, the WAN and the configured agents, each ready when this returns;
        on any failure, stop what was started and raise."""
        if self._stack is not None:
            raise CachenetError("this fleet is already started")
        c = self.config
        self._stack = ExitStack()
        try:
            if c.workdir is None:
                self.workdir = Path(self._stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="cachenet-fleet-")))
            else:
                self.workdir = Path(c.workdir)
                self.workdir.mkdir(parents=True, exist_ok=True)
            self._stack.callback(self.stop_cloud)
            self.start_cloud()
            if c.link is not None:
                self.proxy = self._stack.enter_context(
                    ProxyThread((LOOPBACK, self._port()), c.link))
            self._stack.callback(self._stop_agents)
            for _ in range(c.agents):
                self.start_agent()
        except BaseException:
            self.close()
            raise
        log.info("fleet%s: cloud on %d, %s, %d agents", f" {c.name}" if c.name else "",
                 self._port(), f"WAN on {self.proxy.port}" if self.proxy else "no WAN",
                 len(self.agents))
        return self

    def close(self) -> None:
        """Stop the agents, the WAN and the cloud (each process group; SIGKILL after a
        grace period); safe to call twice."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self.proxy = None

    # -- the cloud ---------------------------------------------------------
    @property
    def cloud_target(self) -> str:
        """``host:port`` agents escalate to: the WAN's, or the cloud's without one."""
        return f"{LOOPBACK}:{self.proxy.port if self.proxy is not None else self._port()}"

    def _port(self) -> int:
        if self.cloud_port is None:
            raise CachenetError("the fleet's cloud has not started")
        return self.cloud_port

    def start_cloud(self) -> Process:
        """Start the cloud and wait until it serves: on port 0 the first time, then on
        the port it had, so that the WAN and the agents find it again."""
        c = self.config
        if self.cloud is not None and self.cloud.proc.poll() is None:
            raise CachenetError("the fleet's cloud is already running")
        self._clouds += 1
        tag = "".join(f"-{part}" for part in (c.name, self._clouds if self._clouds > 1 else "")
                      if part)
        port = self.cloud_port if self.cloud_port is not None else 0
        self.cloud = Process("cloud_server", ["--bundle", str(c.bundle), "--port", str(port),
                                              *c.cloud_args], self._workdir(),
                             env=dict(c.env), tag=tag, nice=c.cloud_nice)
        self.cloud_port = int(self.cloud.wait_ready(c.ready_timeout_s)["port"])
        if c.wait_for:
            from cachenet.protocol.client import CloudClient

            with CloudClient(f"{LOOPBACK}:{self.cloud_port}") as direct:
                for service in c.wait_for:
                    direct.wait_serving(service, timeout=c.ready_timeout_s)
        return self.cloud

    def stop_cloud(self, *, kill: bool = False) -> int | None:
        """Stop the cloud: SIGTERM (then SIGKILL after a grace period), or at once with
        ``kill``, as a crash would; its exit status (None if none was started)."""
        if self.cloud is None:
            return None
        return self.cloud.kill() if kill else self.cloud.stop()

    def restart_cloud(self, *, kill: bool = False) -> Process:
        """Stop the cloud (``kill``: SIGKILL) and start a new one on the same port."""
        self.stop_cloud(kill=kill)
        return self.start_cloud()

    def configure(self, link: LinkProfile) -> None:
        """Change the WAN's link; in force when this returns."""
        if self.proxy is None:
            raise CachenetError("this fleet runs without a WAN (link=None)")
        self.proxy.configure(link)

    # -- agents ------------------------------------------------------------
    def start_agent(self, agent_id: str | None = None, *, args: tuple[str, ...] = (),
                    env: Mapping[str, str] | None = None, cloud: str | None = None) -> Agent:
        """Start one more agent and wait until it serves; it is stopped with the fleet (or
        by :meth:`stop_agent`). ``args`` and ``env`` add to the configured ones;
        ``cloud`` is where it escalates, if not :attr:`cloud_target`."""
        c = self.config
        self._agents += 1
        if agent_id is None:
            n = self._agents
            agent_id = c.agent_ids[n - 1] if n <= len(c.agent_ids) else f"agent-{n}"
        if any(a.id == agent_id for a in self.agents):
            raise CachenetError(f"agent '{agent_id}' is already running in this fleet")
        name = f"{c.name}-{agent_id}" if c.name else agent_id
        extra = (*c.agent_args, *args)
        argv = ["--bundle", str(c.agent_bundle or c.bundle), "--bind", f"tcp://{LOOPBACK}:0",
                "--cloud", cloud or self.cloud_target, "--agent-id", agent_id]
        if c.deadline_ms is not None:
            argv += ["--deadline-ms", str(c.deadline_ms)]
        if "--state-dir" not in extra:  # pushed bundles and the spool: this agent's own
            argv += ["--state-dir", str(self._workdir() / "agents" / name)]
        proc = Process("edge_agent", [*argv, *extra], self._workdir(),
                       env={**c.env, **c.agent_env, **(env or {})}, tag=f"-{name}")
        try:
            endpoint = proc.wait_ready(c.ready_timeout_s)["endpoint"]
        except BaseException:
            proc.stop()
            raise
        agent = Agent(agent_id, proc, endpoint)
        self.agents.append(agent)
        return agent

    def stop_agent(self, agent: Agent) -> int:
        """Stop ``agent`` (SIGTERM, then SIGKILL after a grace period); its exit status."""
        try:
            return agent.process.stop()
        finally:
            if agent in self.agents:
                self.agents.remove(agent)

    def restart_agent(self, agent: Agent) -> Agent:
        """Stop ``agent`` and start it again with the same id (and state directory)."""
        self.stop_agent(agent)
        return self.start_agent(agent.id)

    @contextmanager
    def agent(self, agent_id: str | None = None, **kwargs: Any) -> Iterator[Agent]:
        """A fresh agent of this fleet's cloud and WAN for the ``with`` block
        (:meth:`start_agent`'s arguments), stopped on leaving it."""
        agent = self.start_agent(agent_id, **kwargs)
        try:
            yield agent
        finally:
            self.stop_agent(agent)

    def _stop_agents(self) -> None:
        for agent in reversed(list(self.agents)):
            self.stop_agent(agent)

    def _workdir(self) -> Path:
        if self.workdir is None:
            raise CachenetError("the fleet has not started")
        return self.workdir
