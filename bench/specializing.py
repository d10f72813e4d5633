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
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench.layered import AGENT_ARGS, AGENT_ENV
from cachenet.core.calibration import AGREEMENT_MODES
from cachenet.sim.fleet import Agent, Fleet, FleetConfig

#: The specialiser's log lines for a check's outcome and for a partition model trained.
CHECK_LINE = re.compile(r"specialisation check for \S+: (\w+)")
TRAINED = "trained partition model"
#: How soon the specialiser may look at an agent again, and how often agents report.
CHECK_INTERVAL_S = 2
REPORT_INTERVAL_S = 1


class SpecializingCloud:
    """The specialising cloud behind its own WAN (a :class:`~cachenet.sim.fleet.Fleet`
    with no agent of its own: each run starts a fresh one), entered on ``stack``."""

    def __init__(self, stack: ExitStack, *, bundle: Path, dataset: str, work: Path,
                 library: Path, deadline_ms: float, trainer: str = "finetune",
                 link: Any = None) -> None:
        from cachenet.core.bundle import verify_bundle
        from cloud_server.server import SPECIALIZER_HEALTH

        # Specialise at the agreement target the general model was calibrated to (a
        # bundle calibrated to an escalation budget has none: the default, 0.99).
        cal = verify_bundle(bundle).gate.get("calibration", {})
        target = cal.get("target", 0.99) if cal.get("mode") in AGREEMENT_MODES else 0.99
        self.fleet = stack.enter_context(Fleet(FleetConfig(
            bundle, agents=0, workdir=work, name="specializing", cloud_nice=10,
            cloud_args=("--target", str(target), "--store", str(work / "store"),
                        "--library", str(library), "--specialize", "--replay", dataset,
                        "--specialize-interval", str(CHECK_INTERVAL_S),
                        "--report-interval", str(REPORT_INTERVAL_S),
                        "--partition-trainer", trainer, "--log-level", "INFO"),
            **({"link": link} if link is not None else {}),
            # It labels its replay data before it specialises: minutes for a large model.
            wait_for=(SPECIALIZER_HEALTH,), ready_timeout_s=600,
            deadline_ms=deadline_ms, agent_args=AGENT_ARGS, agent_env=AGENT_ENV)))

    def finish(self, out: Path) -> dict[str, Any]:
        """Stop the cloud, keep its log in ``out``, and count what its specialiser did."""
        self.fleet.stop_cloud()
        assert self.fleet.cloud is not None
        text = self.fleet.cloud.log_path.read_text(errors="replace")
        (out / "specializing-cloud.log").write_text(text)
        outcomes = collections.Counter(m.group(1) for m in CHECK_LINE.finditer(text))
        return {"checks": dict(outcomes), "partitions_trained": text.count(TRAINED),
                "log": "specializing-cloud.log"}

    def agent(self, agent_id: str) -> AbstractContextManager[Agent]:
        """A fresh agent of this cloud, with a state directory of its own, for a ``with``
        block (an :class:`~cachenet.sim.fleet.Agent`)."""
        return self.fleet.agent(agent_id)


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
