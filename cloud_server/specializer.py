"""The cloud learns what each agent sees and pushes it a specialised cache model.

Per agent it keeps a window of escalated inputs with the full model's answers
(:meth:`Specializer.observe`, called by the inference service) and the class
histogram and counters of the agent's stats reports (:meth:`Specializer.report`,
called by the control service). A check runs when the agent's escalation rate
since its last report is above ``escalation_trigger`` or its class histogram has
moved by more than ``shift_trigger`` (total variation) from the one its current
model was made for, at most once per ``min_interval_s``:

1. the active classes are read off the histogram (:func:`cachenet.fleet.specialize.active_classes`);
2. a partition model for them comes from the library when one there covers
   them, else the trainer makes one (:mod:`cachenet.fleet.partition`; by default
   the general cache model fine-tuned on replay data and the agent's
   escalations, labelled by the full model), and it joins the library;
3. candidate and the agent's current model are calibrated at the same
   agreement target on held-out data drawn like the agent's inputs and compared
   on a second half; only a candidate with the higher hit rate is stored as the
   agent's new version (:class:`cachenet.fleet.store.ModelStore`), which the control
   plane then pushes.

Training runs on a worker thread, off the serving loop. Every check is kept in
:attr:`Specializer.history` with its outcome and why.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from cachenet.core.bundle import verify_bundle
from cachenet.core.manifest import Manifest, read_manifest
from cachenet.core.runtime import apply_head, load_cache_model, read_head
from cachenet.exceptions import CachenetError, ConfigError, TrainingStopped
from cachenet.fleet import specialize as sp
from cachenet.fleet.partition import (
    TRAINERS,
    FinetuneConfig,
    PartitionTrainer,
    TrainerContext,
    make_trainer,
)
from cachenet.fleet.replay import ReplayData
from cachenet.fleet.store import ModelStore

log = logging.getLogger(__name__)


@dataclass
class SpecializerConfig:
    target: float = 0.99
    delta: float = 0.05
    #: certify marginally or class by class (:data:`cachenet.core.calibration.CALIBRATIONS`)
    calibration: str = "class"
    escalation_trigger: float = 0.15
    shift_trigger: float = 0.3
    min_interval_s: float = 60.0
    min_requests: int = 50  # answers an agent must have reported before a check
    window: int = 512  # escalated inputs kept per agent
    heldout: int = 2000  # inputs in each of the calibration and evaluation draws
    uniform_share: float = 0.2  # of the calibration draw, from any class (drift guard)
    coverage: float = 0.85
    push_timeout_s: float = 30.0  # wait this long for the agent to run a push before rechecking
    max_classes: int = 4
    #: partition models kept in the library; past it the least recently used one that no
    #: agent runs is deleted (the store keeps its own copy of everything it pushed)
    max_library: int = 64
    poll_s: float = 0.5
    #: how partition models are made: a name in :data:`cachenet.fleet.partition.TRAINERS`
    trainer: str = "finetune"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if self.max_library < 1:
            raise ConfigError(f"the library must hold at least one partition model, "
                              f"got {self.max_library}")
        if self.trainer not in TRAINERS:
            raise ConfigError(f"unknown partition trainer '{self.trainer}'; known: "
                              f"{', '.join(TRAINERS)}")


@dataclass
class AgentState:
    escalations: collections.deque = field(default_factory=lambda: collections.deque(maxlen=512))
    histogram: np.ndarray | None = None
    made_for: np.ndarray | None = None  # histogram the current specialised model was made for
    version: str = ""  # what the agent says it runs
    last_counts: tuple[int, int] = (0, 0)  # requests, escalations at the previous report
    escalation_rate: float | None = None
    requests: int = 0
    last_check: float = 0.0
    due: bool = False
    pending: str | None = None  # pushed, not yet reported as running
    pending_since: float = 0.0
    rejected: set = field(default_factory=set)  # library versions that lost for this agent
    backoff: int = 1  # multiplies min_interval_s after checks that pushed nothing


class Specializer:
    def __init__(self, *, base_bundle: Path, base_model: nn.Module, replay: ReplayData,
                 store: ModelStore, config: SpecializerConfig | None = None,
                 library_dir: Path | None = None,
                 trainer: PartitionTrainer | None = None) -> None:
        self.base = verify_bundle(base_bundle)
        self.base_model = base_model
        self.replay = replay
        self.store = store
        self.config = config or SpecializerConfig()
        #: makes a partition model for a group of classes (config.trainer by default)
        self.trainer = trainer or make_trainer(self.config.trainer, TrainerContext(
            base_model, replay, finetune=self.config.finetune))
        self.agents: dict[str, AgentState] = {}
        self.library: dict[tuple[int, ...], Manifest] = {}
        self._used: dict[tuple[int, ...], float] = {}  # when each entry last served, wall clock
        self.history: list[dict[str, Any]] = []
        self.library_dir = Path(library_dir) if library_dir else store.root / "library"
        # Version of each calibrated copy pushed -> the library bundle it was made from.
        self._agent_versions: dict[str, Manifest] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()  # set on shutdown: training stops at its next step
        self._hold: tuple[np.ndarray, np.ndarray | None] | None = None  # see _held_out
        self._load_library()

    def _load_library(self) -> None:
        """Take back the partition models an earlier run left in the library directory,
        those made from this general model by this trainer; the newest wins where two
        answer the same classes. A bundle that fails verification is skipped with a
        warning."""
        if not self.library_dir.is_dir():
            return
        found: dict[tuple[int, ...], tuple[int, Manifest]] = {}
        for root in self.library_dir.iterdir():
            if root.name.startswith(".") or not (root / "manifest.json").is_file():
                continue
            try:
                m = verify_bundle(root)
            except CachenetError as exc:
                log.warning("library: skipping %s: %s", root, exc)
                continue
            part = m.data.get("partition") or {}
            if (part.get("base_version") != self.base.version
                    or part.get("trainer", "finetune") != self.config.trainer):
                continue
            classes = tuple(int(c) for c in part["classes"])
            made = root.stat().st_mtime_ns
            if classes not in found or made > found[classes][0]:
                found[classes] = (made, m)
        self.library = {k: m for k, (_, m) in found.items()}
        self._used = {k: made / 1e9 for k, (made, _) in found.items()}
        if self.library:
            log.info("library %s: %d partition models of general model %s", self.library_dir,
                     len(self.library), self.base.version)

    def _state(self, agent: str) -> AgentState:
        if agent not in self.agents:
            self.agents[agent] = AgentState(collections.deque(maxlen=self.config.window))
        return self.agents[agent]

    # -- inputs, from the services (cheap: on the serving loop) ---------
    def observe(self, agent: str, x: np.ndarray, labels: np.ndarray) -> None:
        """An escalation from ``agent`` and the full model's labels for it."""
        window = self._state(agent).escalations
        for xi, yi in zip(np.array(x, copy=True), labels, strict=True):
            window.append((xi, int(yi)))

    def forget(self, agent: str) -> None:
        """Drop what is kept for ``agent`` (the control plane evicted it). Called on the
        serving loop, so it takes no lock: a check under way keeps its own reference."""
        self.agents.pop(agent, None)

    def report(self, agent: str, *, version: str, requests: int, escalations: int,
               histogram: dict[str, int]) -> None:
        """An agent's stats report: decide whether a check is due."""
        s = self._state(agent)
        s.version = version
        hist = sp.normalise_histogram({int(k): v for k, v in histogram.items()
                                       if k.lstrip("-").isdigit()}, self.replay.num_classes)
        s.histogram = hist if hist.sum() > 0 else None
        d_req, d_esc = requests - s.last_counts[0], escalations - s.last_counts[1]
        if d_req < 0:  # the agent restarted
            d_req, d_esc = requests, escalations
        s.last_counts = (requests, escalations)
        s.requests = requests
        s.escalation_rate = d_esc / d_req if d_req > 0 else None  # idle: no evidence
        c = self.config
        high = s.escalation_rate is not None and s.escalation_rate > c.escalation_trigger
        moved = (s.histogram is not None and s.made_for is not None
                 and sp.total_variation(s.histogram, s.made_for) > c.shift_trigger)
        if s.histogram is not None and requests >= c.min_requests and (high or moved):
            s.due = True

    def acknowledged(self, agent: str, version: str, applied: bool) -> None:
        """The agent applied or rejected a push: checks for it may go on."""
        s = self._state(agent)
        if s.pending == version or not applied:
            s.pending = None
        if not applied and version in self._agent_versions:  # not that one again
            s.rejected.add(self._agent_versions[version].version)

    # -- the loop -------------------------------------------------------
    async def run(self) -> None:
        """Check agents that are due, one at a time, on a worker thread."""
        while True:
            now = time.monotonic()
            for agent, s in list(self.agents.items()):
                waiting = (s.pending is not None and s.pending != s.version
                           and now - s.pending_since < self.config.push_timeout_s)
                interval = self.config.min_interval_s * s.backoff
                if s.due and not waiting and now - s.last_check >= interval:
                    s.due, s.pending = False, None
                    record = None
                    try:
                        record = await asyncio.to_thread(self.check, agent)
                    except TrainingStopped:
                        return
                    except Exception:
                        log.exception("specialising for %s failed", agent)
                    # Checks that push nothing back off, up to 16 x the interval.
                    pushed = record is not None and record["outcome"] == "pushed"
                    s.backoff = 1 if pushed else min(16, s.backoff * 2)
                    s.last_check = time.monotonic()
            await asyncio.sleep(self.config.poll_s)

    def _current(self, version: str) -> tuple[Path, dict | None]:
        """The ONNX model and partition of what the agent runs (the base when unknown)."""
        m = self._agent_versions.get(version)
        return (m.root, m.data.get("partition")) if m else (self.base.root, None)

    def _candidate(self, classes: tuple[int, ...], s: AgentState, version: str,
                   x: np.ndarray) -> tuple[str, Manifest]:
        """A partition bundle from the library that covers ``classes``, else a new one."""
        running = self._agent_versions.get(version)
        covering = [k for k, m in self.library.items() if set(classes) <= set(k)
                    and m is not running and m.version not in s.rejected
                    and len(k) <= self.config.max_classes]
        if covering:
            chosen = min(covering, key=len)
            self._used[chosen] = time.time()
            return "library", self.library[chosen]
        hard = None
        if s.escalations:
            xs, ys = zip(*s.escalations.copy(), strict=True)  # C-level copy: atomic
            hard = (np.stack(xs), np.asarray(ys))
        t0 = time.perf_counter()
        model = self.trainer(classes, hard, self.stopping.is_set)
        out = self.library_dir / f"p{'-'.join(map(str, classes))}-{time.time_ns()}"
        manifest = sp.write_partition_bundle(out, model, self.base, classes, canary_x=x[:64],
                                             trainer=self.config.trainer)
        log.info("trained partition model %s for classes %s in %.1f s", manifest.version,
                 classes, time.perf_counter() - t0)
        replaced = self.library.get(classes)
        self.library[classes] = manifest
        self._used[classes] = time.time()
        if replaced is not None and replaced not in self._agent_versions.values():
            shutil.rmtree(replaced.root, ignore_errors=True)  # no agent runs it
        self._evict(keep=classes)
        return "trained", manifest

    def _evict(self, *, keep: tuple[int, ...]) -> None:
        """Keep at most ``max_library`` partition models: delete the least recently used
        ones, but never ``keep`` (just made) nor one an agent runs now or has been pushed
        (what runs is scored in every comparison)."""
        running = [self._agent_versions.get(v) for s in list(self.agents.values())
                   for v in (s.version, s.pending) if v]
        while len(self.library) > self.config.max_library:
            idle = [k for k, m in self.library.items() if k != keep and m not in running]
            if not idle:
                return
            oldest = min(idle, key=lambda k: self._used.get(k, 0.0))
            gone = self.library.pop(oldest)
            self._used.pop(oldest, None)
            shutil.rmtree(gone.root, ignore_errors=True)
            log.info("library: deleted %s for classes %s, the least recently used (at most "
                     "%d kept)", gone.version, oldest, self.config.max_library)

    def _held_out(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The general model's logits and features (if it has them) on every held-out
        input, computed once: a head on it is scored with one matrix product."""
        if self._hold is None:
            model, x = load_cache_model(self.base.root, canary=False), self.replay.hold_x
            rows = [slice(i, i + 256) for i in range(0, len(x), 256)]
            logits = np.concatenate([model.raw(x[r]) for r in rows])
            feats = (np.concatenate([model.features(x[r]) for r in rows])
                     if model.features_name else None)
            self._hold = (logits, feats)
        return self._hold

    def _logits(self, root: Path, idx: np.ndarray) -> np.ndarray:
        """A bundle's logits on held-out inputs ``idx``, as an agent computes them."""
        m = read_manifest(root)
        if m.version == self.base.version:
            return self._held_out()[0][idx]
        feats = self._held_out()[1]
        if m.head and m.head["base"] == self.base.version and feats is not None:
            return apply_head(feats[idx], read_head(m))
        return sp.bundle_logits(root, self.replay.hold_x[idx])

    def _scored(self, root: Path, partition: dict | None, cal_idx: np.ndarray,
                ev_idx: np.ndarray) -> sp.Scored:
        return sp.Scored(self._logits(root, cal_idx), self._logits(root, ev_idx), partition)

    def check(self, agent: str) -> dict[str, Any]:
        """Pick or train a candidate for ``agent``, compare, and store it if better."""
        with self._lock:
            s = self.agents.get(agent)
            if s is None:  # forgotten (evicted by the control plane) since it was due
                return self._done({"agent": agent, "time": time.time(), "outcome": "skipped",
                                   "reason": "the agent was forgotten"})
            hist, version = s.histogram, s.version  # report() may replace them meanwhile
            assert hist is not None
            c = self.config
            classes = sp.active_classes(hist, coverage=c.coverage, max_classes=c.max_classes)
            record: dict[str, Any] = {"agent": agent, "time": time.time(),
                                      "classes": list(classes),
                                      "escalation_rate": s.escalation_rate}
            if not classes or hist[list(classes)].sum() < c.coverage:
                record.update(outcome="skipped", reason=f"no {c.max_classes} classes cover "
                              f"{c.coverage:.0%} of the recent inputs")
                return self._done(record)
            seed = len(self.history)
            cal_idx = sp.heldout_like(hist, self.replay, c.heldout,
                                      uniform_share=c.uniform_share, half=0, seed=seed)
            ev_idx = sp.heldout_like(hist, self.replay, c.heldout, half=1, seed=seed)
            source, manifest = self._candidate(classes, s, version,
                                               self.replay.hold_x[cal_idx])
            cmp = sp.compare(
                self._scored(manifest.root, manifest.data["partition"], cal_idx, ev_idx),
                self._scored(*self._current(version), cal_idx, ev_idx),
                self._scored(self.base.root, None, cal_idx, ev_idx),
                float(self.base.gate["threshold"]), full_calib=self.replay.hold_full[cal_idx],
                full_eval=self.replay.hold_full[ev_idx], score_kind=self.base.gate["score"],
                target=c.target, delta=c.delta, calibration=c.calibration)
            record.update(source=source, comparison=cmp.to_dict())
            if not cmp.better:
                s.rejected.add(manifest.version)
                record.update(outcome="rejected", reason=f"hit rate {cmp.candidate_hit_rate:.3f}"
                              f" is not above the current model's {cmp.current_hit_rate:.3f}")
                return self._done(record)
            record.update(outcome="pushed", version=self._store(agent, manifest, cmp))
            s.made_for = hist.copy()
            s.pending, s.pending_since = record["version"], time.monotonic()
            return self._done(record)

    def _store(self, agent: str, manifest: Manifest, cmp: sp.Comparison) -> str:
        """Store a copy of ``manifest`` calibrated for ``agent`` as its new version."""
        staging = self.library_dir / f".agent-{agent}-{time.time_ns()}"
        try:
            tuned = sp.calibrated_copy(manifest.root, staging, cmp)
            stored = self.store.push(staging, agent=agent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._agent_versions[tuned.version] = manifest
        log.info("stored %s version %s for %s: hit rate %.3f vs %.3f at agreement %.3f",
                 tuned.name, tuned.version, agent, cmp.candidate_hit_rate,
                 cmp.current_hit_rate, self.config.target)
        return stored.version

    def _done(self, record: dict[str, Any]) -> dict[str, Any]:
        self.history.append(record)
        log.info("specialisation check for %s: %s%s", record["agent"], record["outcome"],
                 f" ({record['reason']})" if "reason" in record else "")
        return record


def build_specializer(bundle: Path, store: ModelStore, *, replay: str | None = None,
                      device: str | None = None, cache_dir: Path | None = None,
                      config: SpecializerConfig | None = None,
                      library_dir: Path | None = None) -> Specializer:
    """Load what specialisation needs: the general cache model's weights (the bundle's
    ``full/cache.pt``), the replay data (``replay``, else the data the bundle was built
    from) and the full model's answers on it. Slow: run it off the serving loop."""
    from cachenet.exceptions import ConfigError
    from cachenet.toolchain.data import default_cache_dir, load_bundle_splits
    from cachenet.toolchain.full import data_fingerprint
    from cachenet.toolchain.models import load_checkpoint
    from cloud_server.model import load_full_model

    full, manifest = load_full_model(bundle, device=device)
    ckpt = manifest.data.get("full_model", {}).get("cache_checkpoint")
    if not ckpt:
        raise ConfigError(f"bundle {bundle} carries no cache-model checkpoint "
                          "(full/cache.pt); rebuild it with this version of cachenet")
    base, _, _ = load_checkpoint(Path(bundle) / ckpt)
    dataset = manifest.data.get("dataset") or {}
    embedded = dataset.get("name") == "digits" and "sklearn" in str(dataset.get("source"))
    spec = replay or ("digits" if embedded else dataset.get("source"))
    if not spec:
        raise ConfigError("no replay data: pass --replay (a data set like the bundle's)")
    splits = load_bundle_splits(str(spec), dataset, cache_dir=cache_dir)
    if list(splits.input_shape) != [int(d) for d in manifest.input["shape"][1:]]:
        raise ConfigError(f"replay data has inputs {splits.input_shape}, the bundle takes "
                          f"{manifest.input['shape'][1:]}")
    t0 = time.perf_counter()
    # The answers depend on the full model and the data only, not on the cache model.
    full_files = manifest.data.get("full_model", {}).get("files") or []
    full_key = (manifest.data["files"][full_files[0]]["sha256"][:16] if full_files
                else manifest.version)
    answers = ((cache_dir or default_cache_dir()) / "replay"
               / f"{full_key}-{data_fingerprint(splits)}.npz")
    full = full.cpu()
    data = ReplayData.from_splits(splits, full, cache=answers)
    log.info("specialisation ready: %d replay and %d held-out inputs from %s, with the full "
             "model's answers (kept in %s) in %.1f s", len(data.train_x), len(data.hold_x),
             spec, answers, time.perf_counter() - t0)
    config = config or SpecializerConfig()
    trainer = make_trainer(config.trainer, TrainerContext(base.eval(), data, full,
                                                          config.finetune))
    specializer = Specializer(base_bundle=bundle, base_model=base.eval(), replay=data,
                              store=store, config=config, library_dir=library_dir,
                              trainer=trainer)
    specializer._held_out()  # before the first check, not during it
    return specializer
