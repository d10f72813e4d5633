"""``cachenet_specialized`` and its oracle, run live: a specialising cloud, a fresh agent a run.

The cloud runs with ``--specialize`` behind its own emulated WAN, configured
like the other systems' link. Its library of partition models lives in
``library`` (keyed by the general bundle's version), so it grows across runs
and across suite runs, as a deployment's cloud would keep it; what it trains
during the suite, it trains on this machine, beside the systems being measured
(niced, so that it yields to them).

Each run gets a new agent with an id of its own: it starts on the general
cache model, reports its stats every second, and runs what the cloud pushes it.
The bytes crossing the WAN include those reports and pushes.

The oracle runs the same way on another fresh agent: for each input it asks for
the answer of whatever model that agent has active (``policy: edge``) and
escalates (``policy: cloud``) exactly where that answer disagrees with the full
model; its latency is that of the answer it keeps.
"""

from __future__ import annotations

import collections
import re
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench.layered import fresh_agent
from cachenet.sim.daemon import Process
from cachenet.sim.wan import LinkProfile, ProxyThread

#: The specialiser's log lines for a check's outcome and for a partition model trained.
CHECK_LINE = re.compile(r"specialisation check for \S+: (\w+)")
TRAINED = "trained partition model"
#: How soon the specialiser may look at an agent again, and how often agents report.
CHECK_INTERVAL_S = 2
REPORT_INTERVAL_S = 1


class SpecializingCloud:
    def __init__(self, stack: ExitStack, *, bundle: Path, dataset: str, work: Path,
                 library: Path, deadline_ms: float) -> None:
        from cachenet.core.bundle import verify_bundle
        from cachenet.protocol.client import CloudClient
        from cloud_server.server import SPECIALIZER_HEALTH

        self.bundle, self.work, self.deadline_ms = bundle, work, deadline_ms
        # Specialise at the agreement target the general model was calibrated to (a
        # bundle calibrated to an escalation budget has none: the default, 0.99).
        cal = verify_bundle(bundle).gate.get("calibration", {})
        target = cal.get("target", 0.99) if cal.get("mode") == "agreement" else 0.99
        self.cloud = Process("cloud_server", [
            "--target", str(target),
            "--bundle", str(bundle), "--port", "0", "--store", str(work / "store"),
            "--library", str(library), "--specialize", "--replay", dataset,
            "--specialize-interval", str(CHECK_INTERVAL_S),
            "--report-interval", str(REPORT_INTERVAL_S), "--log-level", "INFO"],
            work, tag="-specializing", nice=10)
        stack.callback(self.cloud.stop)
        port = self.cloud.wait_ready()["port"]
        with CloudClient(f"127.0.0.1:{port}") as direct:  # it labels its replay data first
            direct.wait_serving(SPECIALIZER_HEALTH, timeout=600)
        self.proxy = stack.enter_context(ProxyThread(("127.0.0.1", port), LinkProfile()))

    def configure(self, profile: LinkProfile) -> None:
        self.proxy.configure(profile)

    def finish(self, out: Path) -> dict[str, Any]:
        """Stop the cloud, keep its log in ``out``, and count what its specialiser did."""
        self.cloud.stop()
        text = self.cloud.log_path.read_text(errors="replace")
        (out / "specializing-cloud.log").write_text(text)
        outcomes = collections.Counter(m.group(1) for m in CHECK_LINE.finditer(text))
        return {"checks": dict(outcomes), "partitions_trained": text.count(TRAINED),
                "log": "specializing-cloud.log"}

    def agent(self, agent_id: str):
        """A fresh agent of this cloud: (its client, its psutil process)."""
        return fresh_agent(self.bundle, self.proxy.port, self.work, agent_id,
                           self.deadline_ms, {"CACHENET_STATE_DIR": str(self.work / agent_id)})


def pushes(stats: dict[str, Any]) -> dict[str, int]:
    """What the cloud pushed to an agent, from its ``stats`` reply."""
    models = stats.get("models") or {}
    return {"pushes_applied": stats["reloads"]["applied"],
            "pushes_rejected": stats["reloads"]["rejected"],
            "partition_models_held": len(models.get("partitions", {})),
            "model_switches": int(models.get("switches", 0))}


def oracle_answer(client: Any, x: np.ndarray, full_label: int, timeout: float
                  ) -> tuple[dict[str, Any], float]:
    """The oracle's answer and its latency (ms): the active model's where it agrees with
    the full model, else the cloud's."""
    t0 = time.perf_counter()
    answer = client.infer(x, timeout=timeout, policy="edge")
    if answer["label"] != full_label:  # the oracle knows: ask the cloud instead
        t0 = time.perf_counter()
        answer = client.infer(x, timeout=timeout, policy="cloud")
    return answer, (time.perf_counter() - t0) * 1e3
