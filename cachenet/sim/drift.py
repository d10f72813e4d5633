"""``cachenet demo --scenario drift``: the stream's class mix changes; the cloud keeps up.

The cloud server runs with a model store and specialisation on; the agent
reports what it sees every second. The stream shows one group of digits, then
another. In each phase the cloud notices the agent escalating, fine-tunes a
partition model for the classes it sees, checks that it answers more at the
same agreement target, and pushes it; the agent installs and swaps it in while
it keeps serving. The result has, per phase, the escalation rate before and
after the specialised model arrived, and the pushes applied and rejected and
the failed requests (which must be none).

The digits' held-out split is small (270 inputs a half), too small to certify
0.99 agreement for a partition model (the bound needs ~300 accepted inputs),
so this scenario calibrates the general and the specialised models to 0.95,
and uses a smaller general cache model (:data:`DRIFT_WIDTHS`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cachenet.exceptions import CachenetError
from cachenet.sim.fleet import Fleet, FleetConfig

log = logging.getLogger(__name__)

PHASES: tuple[tuple[int, ...], ...] = ((1, 7, 9), (0, 2, 6))
DRIFT_TARGET = 0.95
#: A smaller cache model than the locality demo's (32/64): at 0.95 that one already
#: answers ~97% of these digits, which leaves specialisation nothing to show.
DRIFT_WIDTHS = (8, 16)


def ensure_drift_bundle(cache_dir: Path, *, progress: bool) -> Path:
    from cachenet.core.bundle import verify_bundle

    out = cache_dir / "demo" / "digits-drift"
    try:
        m = verify_bundle(out)
        widths = m.data["model"]["arch"]["kwargs"].get("widths")
        if "cache_checkpoint" in m.data.get("full_model", {}) and \
                tuple(widths or ()) == DRIFT_WIDTHS:
            return out
    except (CachenetError, KeyError):
        pass
    from cachenet.toolchain.build import build

    log.info("building the drift demo bundle at %s", out)
    build(dataset="digits", out=out, cache_dir=cache_dir, progress=progress,
          target=DRIFT_TARGET, cache_widths=DRIFT_WIDTHS)
    return out


def _phase_stream(x: np.ndarray, y: np.ndarray, classes: tuple[int, ...]
                  ) -> tuple[np.ndarray, np.ndarray]:
    pool = np.flatnonzero(np.isin(y, classes))
    return x[pool], y[pool]


def _rate(sources: list[str]) -> float | None:
    if not sources:
        return None
    return float(np.mean([s != "edge" for s in sources]))


def run_phase(client: Any, x: np.ndarray, y: np.ndarray, classes: tuple[int, ...], *,
              after: int, max_wait_s: float, timeout: float, seed: int) -> dict[str, Any]:
    """Stream inputs of ``classes`` until a partition model that answers all of them is
    active, then ``after`` more; returns the phase's figures."""
    rng = np.random.default_rng(seed)
    before: list[str] = []
    later: list[str] = []
    correct, failed, arrived_at = 0, 0, None
    started = time.monotonic()
    while len(later) < after:
        waited = time.monotonic() - started
        if (arrived_at is None and waited > max_wait_s) or waited > max_wait_s + 120:
            break
        i = int(rng.integers(len(x)))
        try:
            answer = client.infer(x[i], timeout=timeout)
        except CachenetError as exc:  # EdgeTimeout included
            log.error("request failed: %s", exc)
            failed += 1
            continue
        (before if arrived_at is None else later).append(answer["source"])
        correct += int(answer["label"] == y[i])
        if arrived_at is None and len(before) % 10 == 0:
            models = client.stats()["models"]
            active = models["partitions"].get(models["active"])
            if active and set(classes) <= set(active):  # a model for this phase
                arrived_at = time.monotonic() - started
                log.info("phase %s: specialised model %s (classes %s) active after %d "
                         "requests, %.1f s", classes, models["active"], active, len(before),
                         arrived_at)
    return {"classes": list(classes), "requests_before": len(before),
            "escalation_rate_before": _rate(before), "requests_after": len(later),
            "escalation_rate_after": _rate(later),
            "specialised_after_s": round(arrived_at, 2) if arrived_at is not None else None,
            "accuracy": correct / max(1, len(before) + len(later)), "failed": failed}


def run_drift_demo(*, rtt_ms: float = 40.0, after: int = 300, max_wait_s: float = 45.0,
                   seed: int = 0, cache_dir: Path | None = None, progress: bool = False,
                   phases: tuple[tuple[int, ...], ...] = PHASES,
                   keep_logs: Path | None = None, bundle: Path | None = None,
                   partition_trainer: str = "finetune") -> dict[str, Any]:
    """Run the drift scenario (see the module docstring); returns its results. With
    ``bundle`` (a digits bundle), it runs that instead of building its own;
    ``partition_trainer`` is how the cloud makes partition models
    (:data:`cachenet.fleet.partition.TRAINERS`)."""
    from cachenet.sim.demo import digits_bundle
    from cachenet.sim.wan import LinkProfile
    from cachenet.toolchain.data import default_cache_dir, load_splits
    from cloud_server.server import SPECIALIZER_HEALTH

    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    started = time.monotonic()
    bundle = (digits_bundle(bundle) if bundle is not None
              else ensure_drift_bundle(cache_dir, progress=progress))
    splits = load_splits("digits", seed=0)
    deadline = max(250.0, 4 * rtt_ms)
    with tempfile.TemporaryDirectory(prefix="cachenet-drift-") as tmp:
        work = Path(tmp)
        config = FleetConfig(
            bundle, link=LinkProfile.from_rtt(rtt_ms), deadline_ms=deadline, workdir=work,
            agent_ids=("camera-1",), cloud_args=(
                "--store", str(work / "store"), "--specialize", "--specialize-interval", "3",
                "--report-interval", "1", "--target", str(DRIFT_TARGET),
                "--escalation-trigger", "0.05", "--partition-trainer", partition_trainer),
            wait_for=(SPECIALIZER_HEALTH,))  # the specialiser labels its data first
        with Fleet(config) as fleet, fleet.agents[0].client() as client:
            results = []
            for n, classes in enumerate(phases):
                px, py = _phase_stream(splits.test.x, splits.test.y, classes)
                results.append(run_phase(client, px, py, classes, after=after,
                                         max_wait_s=max_wait_s, timeout=deadline / 1e3 + 5,
                                         seed=seed + n))
            final = client.stats()
            logs = [fleet.cloud.log_path, fleet.agents[0].process.log_path]
        pushes = final["control"]  # every push, refused on arrival or not
        audit = final.get("audit") or {}
        if keep_logs is not None:  # the processes have stopped: their logs are complete
            keep_logs.mkdir(parents=True, exist_ok=True)
            for path in logs:
                (keep_logs / path.name).write_bytes(path.read_bytes())
    return {"scenario": "drift", "rtt_ms": rtt_ms, "target": DRIFT_TARGET, "phases": results,
            "pushes_applied": pushes["applied"], "pushes_rejected": pushes["rejected"],
            "failed_requests": sum(p["failed"] for p in results),
            "audit": {k: audit.get(k) for k in ("audited", "disagreed", "agreement",
                                                "agreement_bound", "confidence", "steps")},
            "bundle": str(bundle), "wall_s": round(time.monotonic() - started, 2)}


def format_drift(results: dict[str, Any]) -> str:
    lines = [f"cachenet demo --scenario drift: digits, emulated WAN {results['rtt_ms']:g} ms "
             f"RTT, agreement target {results['target']}",
             f"  {'phase classes':<16}{'esc. before':>13}{'(requests)':>12}"
             f"{'esc. after':>13}{'(requests)':>12}{'push after':>12}"]
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    for p in results["phases"]:
        when = "never" if p["specialised_after_s"] is None else f"{p['specialised_after_s']} s"
        lines.append(f"  {p['classes']!s:<16}{pct(p['escalation_rate_before']):>13}"
                     f"{p['requests_before']:>12}{pct(p['escalation_rate_after']):>13}"
                     f"{p['requests_after']:>12}{when:>12}")
    lines.append(f"  pushes applied {results['pushes_applied']}, rejected "
                 f"{results['pushes_rejected']}; failed requests {results['failed_requests']}")
    audit = results.get("audit") or {}
    if audit.get("audited"):
        lines.append(f"  online audit: {audit['audited']} edge answers checked by the cloud, "
                     f"agreement {audit['agreement']:.3f}, at least "
                     f"{audit['agreement_bound']:.3f} with {audit['confidence']:.0%} confidence "
                     f"(anytime-valid); steps dropped: "
                     f"{sum(s.get('drops', 0) for s in (audit.get('steps') or {}).values())}")
    else:
        lines.append("  online audit: no edge answer was checked")
    return "\n".join(lines)
