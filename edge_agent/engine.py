"""The device's cascade, transport-neutral: who answers one input, and what the device
learns from the answer. The ZeroMQ agent (:mod:`edge_agent.agent`) and the
in-process API (:mod:`edge_agent.local`) are front ends over it.

For one input (:meth:`Engine.decide`), in the order that answers most at the least cost:

1. the **layer caches** of the active model (:mod:`cachenet.layercache`): a hit
   at an inner layer answers with the label the full model gave before;
2. the **partition model** (pushed by the cloud) if one is active, handing over
   to the **general model** when unsure, then the general model re-weighted by
   the **stream's class prior** (:mod:`cachenet.core.prior`): the rule is
   :func:`cachenet.core.cascade.answer_row`;
3. else the input **escalates** to the cloud.

Each step that answers is audited (:mod:`cachenet.core.audit`): a random share
of edge answers also goes to the cloud (a shadow escalation; the application
has its answer already), and a step whose disagreement breaks the target is
dropped for a while. After the reply, :meth:`Engine.learn` feeds the answer to
the prior, the model set (which partition model fits the stream) and the layer
caches (which fill with the cloud's labels). Single-threaded: the front end
calls it from one thread. numpy only.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from cachenet.core import cascade
from cachenet.core.audit import Audit
from cachenet.core.calibration import NEVER
from cachenet.core.gate import Gate
from cachenet.core.prior import SECTION as PRIOR_SECTION
from cachenet.core.prior import StreamPrior, from_manifest
from cachenet.core.rolling import ClassThresholds, RollingConfig
from cachenet.core.runtime import CacheModel
from cachenet.exceptions import InputSpecError
from cachenet.layercache.edge import load_edge_layers
from edge_agent.partitions import ModelSet

log = logging.getLogger(__name__)

#: The audited step of each verdict of the model cascade.
_STEP = {cascade.GENERAL: "model", cascade.PRIOR: "prior"}


def equip(model: CacheModel, threads: int | None = None) -> CacheModel:
    """Attach what a bundle carries beyond its model: layer caches, the label-shift gate."""
    model.layers = load_edge_layers(model.manifest, threads)
    section = model.manifest.data.get(PRIOR_SECTION)
    model.prior = None
    if section and model.partition is None:
        config, shipped = from_manifest(section, len(model.manifest.classes))
        model.prior = StreamPrior(shipped, config)
    return model


@dataclass
class Decision:
    """One input's answer at the edge, or the edge's guess while it escalates."""

    answer: dict[str, Any]  # the reply, less its source and total latency
    step: str | None  # the cascade step that answers at the edge; None: escalate
    settle: Any = None  # layer caches waiting for the cloud's label
    audit: bool = False  # a shadow escalation checks this edge answer
    general: CacheModel | None = None  # whose prior observes the answer
    adapt: bool = True  # the answer teaches the prior (not a request with its own gate)
    epoch: int = 0  # the audited step's epoch when it answered
    audit_p: float = 0.0  # the probability with which it was picked for the audit
    thresholds: Any = None  # the per-class thresholds that let it answer, if any

    @property
    def audit_step(self) -> str | None:
        """The step the audit counts this answer under: the prior's with the model's
        (their gates are calibrated together)."""
        return "model" if self.step == "prior" else self.step


class Engine:
    """The cascade over a :class:`ModelSet`, with its audit."""

    def __init__(self, models: ModelSet, audit: Audit, *, layer_cache: bool = True,
                 label_shift: bool = True, class_control: RollingConfig | None = None
                 ) -> None:
        self.models = models
        self.audit = audit
        self.layer_cache = layer_cache
        self.label_shift = label_shift
        #: the general model's thresholds per class, following the stream (None: fixed)
        self.class_control = class_control
        self.thresholds: ClassThresholds | None = None
        self._controlled: cascade.Stage | None = None  # the general stage, with them
        self._serving: tuple[str, str] = ("", "")  # (active, general) versions last seen
        #: partition models retired because their audit broke, for the cloud to hear of:
        #: (version, reason), drained by the control plane; and every one retired, whose
        #: push is refused if it comes again
        self.retired: collections.deque[tuple[str, str]] = collections.deque(maxlen=64)
        self.retired_versions: set[str] = set()
        #: set when the cloud should hear from the device now (a retirement, a move back
        #: to the general model): the control plane reports at once
        self.report_soon = threading.Event()

    def _restart_on_swap(self) -> None:
        """A swapped-in model starts its steps' audit afresh."""
        serving = (self.models.active.version, self.models.general.version)
        if serving == self._serving:
            return
        if self._serving != ("", ""):  # a swap (the audit began with a burst of its own)
            self.audit.begin_burst()
        if serving[0] != self._serving[0]:
            self.audit.restart("partition")
            self.audit.restart("layers")
        if serving[1] != self._serving[1]:
            self.audit.restart("model")
            self.audit.restart("prior")
            general = self.models.general
            self.thresholds = None if self.class_control is None else ClassThresholds(
                general.gate.threshold, self.audit.config.target, self.class_control)
            self._controlled = (None if self.thresholds is None
                                else general.stage.with_per_label(self.thresholds))
        self._serving = serving

    def _models(self, custom: Any) -> tuple[CacheModel, CacheModel | None]:
        """(the model that reads the input, the general model behind it, if handing over)."""
        model = self.models.active
        if model.partition is None or custom is not None:
            return model, None
        if not self.audit.allowed("partition"):
            return self.models.general, None
        return model, self.models.general

    def _stage(self, model: CacheModel, custom: Any) -> cascade.Stage:
        if custom is not None:
            return model.stage.with_gate(custom)
        if model.partition is None and not self.audit.allowed("model"):
            return model.stage.with_gate(Gate(model.gate.score, NEVER))
        if model is self.models.general and self._controlled is not None:
            return self._controlled  # made once per general model, not per request
        return model.stage

    def decide(self, x: np.ndarray, header: dict[str, Any], *, can_audit: bool) -> Decision:
        """Who answers ``x`` (one input); ``can_audit``: a cloud is there to audit with."""
        custom = header.get("gate")  # this request's own gate (a baseline): no adaptation
        policy = header.get("policy", "auto")
        self.audit.tick()
        self._restart_on_swap()
        model, general = self._models(custom)
        base = general or model
        layers = model.layers if (self.layer_cache and custom is None and policy != "cloud"
                                  and self.audit.allowed("layers")) else None
        settle = None
        if layers is not None:
            answered = layers.cascade.run(layers.runner, x, 1)  # type: ignore[attr-defined]
            if answered.by[0] >= 0:  # a layer cache answered, with the full model's label
                return self._local(Decision(self._layer_answer(header, model, layers, answered),
                                            "layers", general=base), policy, can_audit)
            logits = answered.logits
            settle = (layers.cascade, answered)  # type: ignore[attr-defined]
        else:
            logits = model.raw(x)
        prior = base.prior
        adjust = (prior.gate_row if prior is not None and self.label_shift and custom is None
                  and self.audit.allowed("prior") else None)
        verdict = cascade.answer_row(
            self._stage(model, custom), logits[0],
            self._stage(general, None) if general is not None else None,
            (lambda: general.raw(x)[0])
            if general is not None else None, adjust)
        if not math.isfinite(verdict.confidence):
            raise InputSpecError("the cache model's output is not finite: the input's values "
                                 "lie outside what the model takes (pixels scaled to [0, 1])")
        versions = {"cache": model.version}
        if general is not None and verdict.by != cascade.ACTIVE:
            versions["cache_general"] = general.version
        answer = {"id": header.get("id"), "ok": True, "label": verdict.label,
                  "class": model.manifest.classes[verdict.label],
                  "confidence": verdict.confidence, "versions": versions, "latency_us": {}}
        if settle is not None:
            answer["answered_by"] = "model"
        if verdict.by == cascade.PRIOR:
            answer["answered_by"] = "prior"
        step = None
        if verdict.local and not (settle is not None and settle[1].checks):
            step = _STEP.get(verdict.by) or ("partition" if model.partition else "model")
        decision = Decision(answer, step, settle, general=base, adapt=custom is None)
        if step == "model" and custom is None and (
                model is self.models.general or verdict.by == cascade.GENERAL):
            decision.thresholds = self.thresholds  # they decided: the audit updates them
        return self._local(decision, policy, can_audit)

    def _local(self, decision: Decision, policy: str, can_audit: bool) -> Decision:
        """Pick the audits: answers the edge gives under its own rules (policy ``auto``,
        the calibrated gates) are the ones the target is about."""
        if policy == "auto" and decision.adapt and decision.step is not None:
            decision.audit = self.audit.pick(can_audit)
            decision.audit_p = self.audit.last_rate
            decision.epoch = self.audit.epoch(decision.audit_step)  # type: ignore[arg-type]
        return decision

    @staticmethod
    def _layer_answer(header: dict[str, Any], model: CacheModel, layers: Any, answered: Any
                      ) -> dict[str, Any]:
        label = int(answered.labels[0])
        rule = layers.cascade.rules[int(answered.by[0])]
        return {"id": header.get("id"), "ok": True, "label": label,
                "class": model.manifest.classes[label],
                "confidence": float(np.exp(answered.logits[0].max())),
                "answered_by": rule.name, "versions": {"cache": model.version},
                "latency_us": {}}

    def learn(self, decision: Decision, source: str) -> None:
        """After the reply: the answer teaches the prior, the model set, the layer caches."""
        answer = decision.answer
        label = int(answer["label"])
        if source == "edge-fallback" or (source == "edge" and decision.step is None):
            return  # an unsure guess (no cloud, or policy "edge") teaches nothing
        prior = decision.general.prior if decision.general is not None else None
        if prior is not None and decision.adapt:
            resets = prior.resets
            prior.observe(label)
            if prior.resets != resets:
                self.audit.begin_burst()  # the stream moved
        if decision.settle is not None and source == "cloud":
            layer_cascade, answered = decision.settle
            layer_cascade.settle(answered, np.zeros(1, np.int64), np.asarray([label]),
                                 np.asarray([answer["confidence"]]))
        switched = self.models.observe(label, hit=source == "edge" and "cache_general"
                                       not in answer["versions"])
        if switched is not None and switched.partition is None:
            self.report_soon.set()  # the context moved: the cloud hears of it now

    def audited(self, decision: Decision, cloud_label: int | None, reason: str | None) -> None:
        """A shadow escalation came back: ``cloud_label``, or why there is none."""
        if cloud_label is None:
            self.audit.unanswered(reason or "no answer")
            return
        step = decision.audit_step
        assert step is not None
        agree = int(decision.answer["label"]) == cloud_label
        if decision.thresholds is not None and decision.thresholds is self.thresholds:
            self.thresholds.update(int(decision.answer["label"]), not agree, decision.audit_p)
        if not self.audit.record(step, agree, decision.epoch):
            return
        if step == "partition":
            self._retire(decision.answer["versions"]["cache"])
            return
        if step != "model":
            return
        prior = decision.general.prior if decision.general is not None else None
        if prior is not None and self.label_shift and self.audit.allowed("prior"):
            self.audit.divert("model", "prior")  # the adapted part goes first
            prior.reset()  # back later, learning the stream afresh

    def _retire(self, version: str) -> None:
        """A partition model's audit broke the target: roll back to the general model
        (the model set stops holding it) and tell the cloud, which does not push it
        again."""
        if self.models.retire(version):
            self.retired_versions.add(version)
            self.retired.append((version, "retired on the device: its audit's bound broke "
                                          f"the agreement target {self.audit.config.target}"))
            self.report_soon.set()

    def snapshot(self) -> dict[str, Any]:
        general = self.models.general
        prior = general.prior
        return {"audit": self.audit.snapshot(), "retired": sorted(self.retired_versions),
                "prior": prior.snapshot() if prior is not None else None,
                "class_thresholds": (self.thresholds.snapshot()
                                     if self.thresholds is not None else None)}
