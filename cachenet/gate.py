"""The confidence gate: score the cache model's logits; answer at the edge or escalate.

Every score is a confidence in [0, 1], higher meaning surer, so one rule fits
all: answer at the edge when ``score >= threshold``, escalate otherwise.

* ``max_softmax``: the largest softmax probability.
* ``margin``: the top-1 probability minus the top-2 probability.
* ``entropy``: one minus the softmax entropy divided by log(number of classes).

numpy only: this module runs on the edge, where there is no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cachenet.exceptions import ConfigError


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def max_softmax(probs: np.ndarray) -> np.ndarray:
    return probs.max(axis=-1)


def margin(probs: np.ndarray) -> np.ndarray:
    if probs.shape[-1] < 2:
        return np.ones(probs.shape[:-1], dtype=probs.dtype)
    top2 = np.partition(probs, -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def entropy_confidence(probs: np.ndarray) -> np.ndarray:
    k = probs.shape[-1]
    if k < 2:
        return np.ones(probs.shape[:-1], dtype=probs.dtype)
    h = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=-1)
    return (1.0 - h / np.log(k)).clip(0.0, 1.0)


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max_softmax": max_softmax,
    "margin": margin,
    "entropy": entropy_confidence,
}


def score(logits: np.ndarray, kind: str) -> np.ndarray:
    """Confidence of each row of ``logits`` (N x K) under score ``kind``."""
    try:
        fn = SCORES[kind]
    except KeyError:
        raise ConfigError(f"unknown gate score '{kind}'; known: {', '.join(SCORES)}") from None
    return fn(softmax(np.asarray(logits, dtype=np.float64))).astype(np.float64)


@dataclass(frozen=True)
class Gate:
    """A score and a threshold: ``decide`` says which inputs the edge answers."""

    score: str
    threshold: float

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ConfigError(f"unknown gate score '{self.score}'; known: {', '.join(SCORES)}")

    def confidence(self, logits: np.ndarray) -> np.ndarray:
        return score(logits, self.score)

    def confidence_row(self, row: np.ndarray) -> float:
        """The score of one row of logits, in plain Python: the edge's per-request path.

        For a handful of classes this is several times faster than the numpy
        path, whose per-call overhead dominates on tiny arrays; the value is
        the same (see the tests).
        """
        values = row.tolist()
        top = max(values)
        exps = [math.exp(v - top) for v in values]
        total = sum(exps)
        if self.score == "max_softmax":
            return 1.0 / total
        if self.score == "margin":
            if len(exps) < 2:
                return 1.0
            first, second = sorted(exps)[-2:][::-1]
            return (first - second) / total
        k = len(exps)
        if k < 2:
            return 1.0
        h = -sum((e / total) * math.log(max(e / total, 1e-12)) for e in exps)
        return min(1.0, max(0.0, 1.0 - h / math.log(k)))

    def decide(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted labels, confidences, True where the edge answers)."""
        conf = self.confidence(logits)
        return np.asarray(logits).argmax(axis=-1), conf, conf >= self.threshold


def outcome(logits: np.ndarray, score_kind: str, partition: Mapping[str, Any] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, confidences) of a cache model's logits (N x K), as the agent reads them.

    For a partition model (``partition`` is its manifest entry: the global
    ``classes`` it answers and the ``other_index`` output), labels are mapped
    to global classes, and ``other`` gets confidence 0, so it always escalates,
    with the best of the partition's own classes as its label.
    """
    conf = score(logits, score_kind)
    if partition is None:
        return np.asarray(logits).argmax(axis=-1), conf
    classes = np.asarray(partition["classes"])
    other = int(partition["other_index"])
    top = logits.argmax(1)
    inner = np.delete(logits, other, axis=1).argmax(1)
    return classes[inner], np.where(top == other, 0.0, conf)
