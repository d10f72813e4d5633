"""Who answers a request: the one definition of the edge's cascade.

A device holds a *general* cache model and, once the cloud has specialised it,
*partition* models, each answering a few classes plus ``other``. For one input:

1. the active cache model reads its logits: a global label and the gate's
   confidence (``other`` reads as confidence 0, so it is never sure);
2. sure (confidence >= its threshold): the edge answers with it;
3. unsure, and the active model is a partition model: it hands over to the
   general model, which answers if *it* is sure (its label is also the one the
   edge falls back on, since it covers every class);
4. unsure, and the device follows its stream's class prior
   (:mod:`cachenet.core.prior`): the general model's logits, re-weighted by the
   prior, answer if the label-shift gate is sure of the label the model
   already predicts (:data:`PRIOR`);
5. otherwise the request escalates to the cloud.

On the device the layer caches come before all of this
(:mod:`cachenet.layercache.cascade`), and the online audit may drop any step
(:mod:`cachenet.core.audit`): :mod:`edge_agent.engine` puts them together.

:func:`decide` is that rule. :func:`answer_row` applies it to one request, as the
agent does, running the general model only when step 3 needs it;
:func:`answer_batch` applies it to precomputed logits, as the cloud's
specialiser and the benchmarks do when they ask how an agent would answer.
numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cachenet.core.gate import Gate, score, score_row

#: Who answered, in a :class:`Verdict`.
ACTIVE, GENERAL, PRIOR, ESCALATE = "active", "general", "prior", "escalate"

#: The label-shift gate on one row of a general model's logits: (label, confidence,
#: sure), or None while the device has no stream prior to use.
Adjust = Callable[[np.ndarray], "tuple[int, float, bool] | None"]


def read(logits: np.ndarray, score_kind: str, partition: Mapping[str, Any] | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """(global labels, confidences) of a cache model's logits (N x K).

    For a partition model (``partition``: its manifest entry, the global
    ``classes`` its outputs answer and the ``other_index`` output), labels are
    mapped to global classes, and ``other`` gets confidence 0 with the best of
    the partition's own classes as its label.
    """
    logits = np.asarray(logits)
    conf = score(logits, score_kind)
    if partition is None:
        return logits.argmax(axis=-1), conf
    classes = np.asarray(partition["classes"])
    other = int(partition["other_index"])
    top = logits.argmax(1)
    inner = np.delete(logits, other, axis=1).argmax(1)
    return classes[inner], np.where(top == other, 0.0, conf)


@dataclass(frozen=True)
class Stage:
    """One cache model's place in the cascade: its gate and, for a partition model,
    the global classes its outputs answer and the index of its ``other`` output."""

    gate: Gate
    classes: tuple[int, ...] | None = None
    other_index: int | None = None
    #: per-label thresholds that replace the gate's (:mod:`cachenet.core.rolling`)
    per_label: Any = None

    @classmethod
    def from_manifest(cls, gate: Mapping[str, Any], partition: Mapping[str, Any] | None
                      ) -> Stage:
        g = Gate(str(gate["score"]), float(gate["threshold"]))
        if not partition:
            return cls(g)
        return cls(g, tuple(int(c) for c in partition["classes"]),
                   int(partition["other_index"]))

    @property
    def is_partition(self) -> bool:
        return self.classes is not None

    @property
    def partition(self) -> dict[str, Any] | None:
        """The manifest's form of the partition, for :func:`read`."""
        if self.classes is None:
            return None
        return {"classes": list(self.classes), "other_index": self.other_index}

    def with_gate(self, gate: Gate) -> Stage:
        return replace(self, gate=gate, per_label=None)

    def with_per_label(self, thresholds: Any) -> Stage:
        """This stage with ``thresholds.threshold(label)`` in place of the gate's."""
        return replace(self, per_label=thresholds)

    def threshold(self, label: int) -> float:
        """The threshold an answer of ``label`` must reach."""
        if self.per_label is None:
            return self.gate.threshold
        return self.per_label.threshold(label)

    def covers(self, label: int) -> bool:
        """Can this model answer ``label`` itself? (Always, for a general model.)"""
        return self.classes is None or label in self.classes

    def read(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`read` with this stage's score and partition."""
        return read(logits, self.gate.score, self.partition)

    def read_row(self, row: np.ndarray) -> tuple[int, float]:
        """(global label, confidence) of one row of logits: the per-request path, the
        same values as :meth:`read` (see the tests)."""
        best = int(row.argmax())
        if self.classes is None:
            return best, score_row(row, self.gate.score)
        if best == self.other_index:
            return self.classes[int(np.delete(row, best).argmax())], 0.0
        return self.classes[best], score_row(row, self.gate.score)


@dataclass(frozen=True)
class Verdict:
    """The cascade's answer for one input: ``local`` when the edge answers it, ``by``
    the model that does (:data:`ACTIVE`, :data:`GENERAL`) or :data:`ESCALATE`. The
    label is the one the edge answers or falls back on."""

    label: int
    confidence: float
    local: bool
    by: str


def decide(active: Stage, label: int, confidence: float, general: Stage | None,
           read_general: Callable[[], tuple[int, float]],
           adjusted: Callable[[], tuple[int, float, bool] | None] | None = None) -> Verdict:
    """The cascade's rule (see the module docstring), for the active model's reading;
    ``read_general`` is called only when the general model is asked, ``adjusted`` (the
    label-shift gate on the general model's logits) only when the models are unsure."""
    if confidence >= active.threshold(label):
        return Verdict(label, confidence, True, ACTIVE)
    if active.is_partition and general is not None:
        g_label, g_conf = read_general()
        if g_conf >= general.threshold(g_label):
            return Verdict(g_label, g_conf, True, GENERAL)
        label, confidence = g_label, g_conf
    elif active.is_partition:
        return Verdict(label, confidence, False, ESCALATE)
    prior = adjusted() if adjusted is not None else None
    if prior is not None and prior[2] and prior[0] == label:
        return Verdict(label, prior[1], True, PRIOR)
    return Verdict(label, confidence, False, ESCALATE)


def answer_row(active: Stage, row: np.ndarray, general: Stage | None = None,
               general_row: Callable[[], np.ndarray] | None = None,
               adjust: Adjust | None = None) -> Verdict:
    """One request: the active model's logits ``row``; ``general_row`` runs the general
    model on the same input when the cascade needs it (no general: no hand-over);
    ``adjust`` is the label-shift gate, applied to the general model's row."""
    label, conf = active.read_row(row)
    rows: list[np.ndarray] = [] if active.is_partition else [row]

    def adjusted() -> tuple[int, float, bool] | None:
        return adjust(rows[0]) if adjust is not None and rows else None

    if general is None or general_row is None:
        return decide(active, label, conf, None, _no_general, adjusted)

    def read_general() -> tuple[int, float]:
        rows.append(general_row())  # type: ignore[misc]
        return general.read_row(rows[-1])  # type: ignore[union-attr]

    return decide(active, label, conf, general, read_general, adjusted)


def _no_general() -> tuple[int, float]:
    raise AssertionError("no general model to hand over to")


@dataclass
class Verdicts:
    """:func:`answer_batch`'s answers: per input, the label the edge answers or falls
    back on, ``local`` where the edge answers, ``own`` where the active model does."""

    labels: np.ndarray
    local: np.ndarray
    own: np.ndarray


def answer_batch(active: Stage, logits: np.ndarray, general: Stage | None = None,
                 general_logits: np.ndarray | None = None) -> Verdicts:
    """How an agent answers each row of ``logits`` (the active model's) with ``general``
    behind it (``general_logits``: its logits on the same inputs)."""
    labels, conf = active.read(logits)
    g_labels, g_conf = (general.read(general_logits) if general is not None
                        and general_logits is not None else (labels, conf))
    handover = general if general_logits is not None else None
    verdicts = [decide(active, int(labels[i]), float(conf[i]), handover,
                       lambda i=i: (int(g_labels[i]), float(g_conf[i])))
                for i in range(len(labels))]
    return Verdicts(np.array([v.label for v in verdicts], dtype=np.int64),
                    np.array([v.local for v in verdicts], dtype=bool),
                    np.array([v.by == ACTIVE for v in verdicts], dtype=bool))
