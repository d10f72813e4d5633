"""The suite's ``cachenet_layercache`` system: a layered bundle's cloud and fresh agents.

A cloud server runs the bundle's full model, with its layer caches
(``--layer-cache``) where the bundle has them for the cloud (``cachenet layercache
--where edge`` fits the edge's alone), behind its own emulated WAN; every run gets a
fresh agent of the same bundle (:meth:`cachenet.sim.fleet.Fleet.agent`), whose layer
caches start as the bundle ships them and learn the cloud's answers to its
escalations as the run goes.

Also the settings every benchmark agent runs with (:data:`AGENT_ARGS`,
:data:`AGENT_ENV`).
"""

from __future__ import annotations

from pathlib import Path

from cachenet.core.bundle import verify_bundle
from cachenet.sim.fleet import Fleet, FleetConfig

#: Every benchmark agent: quiet, no spool (a run's fallbacks are not uploaded later).
AGENT_ARGS = ("--log-level", "WARNING", "--no-spool")
#: One ONNX Runtime thread per agent, as on a small device.
AGENT_ENV = {"OMP_NUM_THREADS": "1"}


def layered_fleet(bundle: Path, work: Path, deadline_ms: float) -> Fleet:
    """The layered bundle's cloud (``--layer-cache`` if it has the cloud's) behind a WAN
    of its own, no agent yet: each run starts a fresh one (``fleet.agent(run_id)``)."""
    cloud = bool((verify_bundle(bundle).data.get("full_model") or {}).get("layer_cache"))
    return Fleet(FleetConfig(bundle, agents=0, workdir=work, name="layered",
                             cloud_args=(*(("--layer-cache",) if cloud else ()),
                                         "--log-level", "WARNING"),
                             deadline_ms=deadline_ms, agent_args=AGENT_ARGS,
                             agent_env=AGENT_ENV))
