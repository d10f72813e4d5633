"""Deployment: systemd readiness of both daemons, and the unit files, container recipes
and Kubernetes manifests in deploy/ checked against the daemons they run.

The readiness test runs each daemon as a real process under a fake systemd: a Unix
datagram socket passed as NOTIFY_SOCKET, with a watchdog. READY=1 must come once, and
only when the daemon answers a request sent the moment it arrives; WATCHDOG=1 must follow
at the watchdog's pace, and STOPPING=1 on SIGTERM. Container images cannot be built here
(no Docker daemon); their recipes are checked for what they promise: non-root, exec-form
entry points, no torch on the edge, flags the daemons take.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import socket
import tempfile
import time
from pathlib import Path

import pytest

from cachenet.protocol.client import CloudClient
from cachenet.sim.daemon import Process
from cloud_server.__main__ import make_parser as cloud_parser
from cloud_server.config import load_config as cloud_config
from edge_agent.__main__ import make_parser as edge_parser
from edge_agent.client import EdgeClient
from edge_agent.config import load_config as edge_config
from tests.processes import SINGLE_THREAD

ROOT = Path(__file__).resolve().parents[1]
DAEMONS = {"cachenet-edge": (edge_parser, edge_config),
           "cachenet-cloud": (cloud_parser, cloud_config)}


def daemon_settings(binary: str, argv: list[str]):
    """What the daemon's flags (and nothing of this machine's environment) set: the
    settings loader refuses a flag, or a value, the daemon would refuse."""
    parser, load = DAEMONS[binary]
    args = vars(parser().parse_args(argv))  # SystemExit on a flag the daemon does not take
    args.pop("config")  # a file on the device, not here
    return load(environ={}, **args)

DEPLOY = ROOT / "deploy"


class FakeSystemd:
    """NOTIFY_SOCKET for a child: the datagrams it sends, in order."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))  # short: sun_path
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[dict[str, str]] = []

    def env(self, watchdog_s: float) -> dict[str, str]:
        return {**SINGLE_THREAD, "NOTIFY_SOCKET": str(self.path),
                "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}

    def next(self, timeout: float) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        message = dict(line.split("=", 1) for line in data.splitlines())
        self.messages.append(message)
        return message

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(deadline - time.monotonic(), 0.01))
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.dir.rmdir()


@pytest.fixture
def systemd():
    fake = FakeSystemd()
    yield fake
    fake.close()


def check_lifecycle(systemd: FakeSystemd, proc: Process, answer) -> None:
    """READY=1 once, when ``answer(status)`` succeeds at once; then watchdog pings; then
    STOPPING=1 on SIGTERM and a clean exit."""
    try:
        ready = systemd.wait_for("READY", 120)
        assert ready["READY"] == "1" and systemd.messages == [ready]  # nothing before it
        answer(ready["STATUS"])  # it serves the moment it says so
        pings = [systemd.wait_for("WATCHDOG", 10) for _ in range(3)]
        assert all(p["WATCHDOG"] == "1" for p in pings)
    finally:
        code = proc.stop()
    assert code == 0
    while "STOPPING" not in systemd.messages[-1]:
        systemd.next(10)
    assert sum("READY" in m for m in systemd.messages) == 1


def test_the_cloud_is_ready_only_when_it_serves(systemd, digits_bundle, digits_splits,
                                                tmp_path):
    proc = Process("cloud_server", ["--bundle", str(digits_bundle[0]), "--port", "0"],
                   tmp_path, env=systemd.env(0.4))

    def answer(status: str) -> None:
        port = int(re.search(r"on port (\d+)", status).group(1))
        with CloudClient(f"127.0.0.1:{port}") as c:
            assert c.infer(digits_splits.test.x[:1], timeout=10).labels.shape == (1,)

    check_lifecycle(systemd, proc, answer)


def test_the_agent_is_ready_only_when_it_serves(systemd, digits_bundle, digits_splits,
                                                tmp_path):
    proc = Process("edge_agent", ["--bundle", str(digits_bundle[0]), "--bind",
                                  "tcp://127.0.0.1:0", "--spool-dir", str(tmp_path / "spool")],
                   tmp_path, env=systemd.env(0.4))

    def answer(status: str) -> None:
        endpoint = re.search(r"on (tcp://\S+)", status).group(1)
        with EdgeClient(endpoint) as c:
            assert c.infer(digits_splits.test.x[0], timeout=10)["source"] in (
                "edge", "edge-fallback")

    check_lifecycle(systemd, proc, answer)


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(DEPLOY / "systemd" / name)
    return parser


@pytest.mark.parametrize("name", ["cachenet-edge.service", "cachenet-cloud.service"])
def test_unit_files_notify_and_run_flags_the_daemons_take(name):
    service = unit(name)["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0 and service["KillSignal"] == "SIGTERM"
    assert service["User"] != "root" and service["Restart"] == "on-failure"
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name in DAEMONS
    daemon_settings(Path(argv[0]).name, argv[1:])


def test_the_units_edge_config_is_one_the_agent_loads():
    config = edge_config(file=DEPLOY / "systemd" / "edge.toml", environ={})
    assert config.escalation_target().address == "cloud.example:50051"
    assert config.trusted_key and config.tls_cert and config.tls_key  # signed, mutual TLS


def dockerfile(name: str) -> dict[str, list[str]]:
    text = (DEPLOY / "docker" / name).read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word, []).append(rest.strip())
    return out


@pytest.mark.parametrize("name, binary", [("edge.Dockerfile", "cachenet-edge"),
                                          ("cloud.Dockerfile", "cachenet-cloud")])
def test_images_run_non_root_in_exec_form(name, binary):
    d = dockerfile(name)
    user = d["USER"][-1]
    assert user not in ("root", "0")
    assert json.loads(d["ENTRYPOINT"][-1]) == [binary]  # exec form: signals reach it
    daemon_settings(binary, json.loads(d["CMD"][-1]))
    installs = " ".join(r for r in d["RUN"] if "pip install" in r)
    if binary == "cachenet-edge":
        assert "[build]" not in installs and "torch" not in installs.lower()
    else:
        assert ".[build]" in installs and "TORCH_INDEX" in installs


def test_the_kubernetes_manifests_fit_the_cloud():
    yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra")
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "cloud.yaml").read_text())}
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = daemon_settings("cachenet-cloud", container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "health": args.health_port,
                     "metrics": args.metrics_port}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"]
    assert container["readinessProbe"]["grpc"]["service"] == "cachenet.v1.InferenceService"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > args.grace_s
    assert pod["spec"]["securityContext"]["runAsNonRoot"]
    assert container["resources"]["requests"]["cpu"]
    service = docs["Service"]["spec"]
    assert service["clusterIP"] == "None"  # headless: clients balance over every pod
    assert service["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
