"""The confidence gate: score the cache model's logits; answer at the edge or escalate.

Every score is a confidence in [0, 1], higher meaning surer, so one rule fits
all: answer at the edge when ``score >= threshold``, escalate otherwise.

* ``max_softmax``: the largest softmax probability.
* ``margin``: the top-1 probability minus the top-2 probability.
* ``entropy``: one minus the softmax entropy divided by log(number of classes).

A score is one entry of :data:`SCORES`: its batched form (numpy, for calibration
and evaluation) and its one-row form (plain Python, for the edge's per-request
path, where numpy's per-call overhead dominates on a handful of classes). Both
give the same value (see the tests); adding a score is one entry here, and the
CLI, the manifest schema and the edge's wire format read their choices off it.

numpy only: this module runs on the edge, where there is no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


# One-row forms: ``exps`` are exp(logit - max logit) (so the largest is 1.0) and
# ``total`` their sum.
def _max_softmax_row(exps: list[float], total: float) -> float:
    return 1.0 / total


def _margin_row(exps: list[float], total: float) -> float:
    if len(exps) < 2:
        return 1.0
    first, second = sorted(exps)[-2:][::-1]
    return (first - second) / total


def _entropy_row(exps: list[float], total: float) -> float:
    k = len(exps)
    if k < 2:
        return 1.0
    h = -sum((e / total) * math.log(max(e / total, 1e-12)) for e in exps)
    return min(1.0, max(0.0, 1.0 - h / math.log(k)))


@dataclass(frozen=True)
class Score:
    """A gate score: ``batch`` maps softmax probabilities (N x K) to confidences;
    ``row`` maps one row's exponentials and their sum to the same confidence."""

    batch: Callable[[np.ndarray], np.ndarray]
    row: Callable[[list[float], float], float]


#: The registered gate scores, by name.
SCORES: dict[str, Score] = {
    "max_softmax": Score(max_softmax, _max_softmax_row),
    "margin": Score(margin, _margin_row),
    "entropy": Score(entropy_confidence, _entropy_row),
}


def get_score(kind: str) -> Score:
    try:
        return SCORES[kind]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown gate score '{kind}'; known: {', '.join(SCORES)}") from None


def score(logits: np.ndarray, kind: str) -> np.ndarray:
    """Confidence of each row of ``logits`` (N x K) under score ``kind``."""
    fn = get_score(kind).batch
    return fn(softmax(np.asarray(logits, dtype=np.float64))).astype(np.float64)


def score_row(row: np.ndarray, kind: str) -> float:
    """Confidence of one row of logits, in plain Python: the edge's per-request path."""
    values = row.tolist()
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return get_score(kind).row(exps, sum(exps))


@dataclass(frozen=True)
class Gate:
    """A score and a threshold: ``decide`` says which inputs the edge answers."""

    score: str
    threshold: float

    def __post_init__(self) -> None:
        get_score(self.score)

    def confidence(self, logits: np.ndarray) -> np.ndarray:
        return score(logits, self.score)

    def confidence_row(self, row: np.ndarray) -> float:
        """The score of one row of logits (:func:`score_row`)."""
        return score_row(row, self.score)

    def decide(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted labels, confidences, True where the edge answers)."""
        conf = self.confidence(logits)
        return np.asarray(logits).argmax(axis=-1), conf, conf >= self.threshold
