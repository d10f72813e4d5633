"""Label-shift adaptation: the stream's class prior, estimated online, in the posterior.

A camera sees two or three classes at a time, so the class prior of its stream
is far from the one the cache model was trained under. Under label shift (the
classes' looks stay, their frequencies change) Bayes' rule says how the
posterior moves (Saerens et al., 2002): ``p_t(y|x) ~ p_s(y|x) pi_t(y) / pi_s(y)``,
i.e. the logits gain ``log pi_t - log pi_s``. No training, no push.

:class:`StreamPrior` keeps ``pi_t``: the classes of the last ``window`` answers
(the cloud's, and the edge's own, which the audit checks), smoothed towards the
shipped prior ``pi_s`` by ``strength`` pseudo-counts, used once ``min_count``
answers are in. An answer of a class the estimate gives less than ``surprise``
means the stream moved: the window restarts and the shipped prior is back.

The adjusted gate (:meth:`StreamPrior.answer_row`) answers only where the prior
makes the model surer of the label it already predicts: it never flips the
model's own top class (a prior still holding the last run's class would
otherwise answer the new run's first inputs with the old class). Its threshold
is calibrated at build time on streams simulated over the calibration split,
with this very class (:mod:`cachenet.toolchain.adapt`), and written in the
manifest's ``label_shift`` section::

    label_shift  {score, threshold: finite, window: int >= 1, strength: > 0,
                  min_count: int >= 1, surprise: [0, 1), prior: [K positive numbers],
                  calibration: {...}}                               (optional)

numpy only: this runs on the device.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cachenet.core.gate import SCORES, get_score
from cachenet.exceptions import ManifestError

SECTION = "label_shift"


@dataclass(frozen=True)
class PriorConfig:
    """How the stream's prior is followed, and the adjusted gate's score and threshold."""

    window: int = 50
    strength: float = 2.0
    min_count: int = 3
    surprise: float = 0.05
    score: str = "max_softmax"
    threshold: float = 1.0 + 1e-6  # never, until calibrated

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "strength": self.strength, "min_count": self.min_count,
                "surprise": self.surprise, "score": self.score, "threshold": self.threshold}


def _number(section: Mapping[str, Any], key: str, lo: float, hi: float, *, integer: bool = False
            ) -> float:
    v = section.get(key)
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok or not math.isfinite(v) or not lo <= v <= hi:
        raise ManifestError(f"label_shift.{key} must be a{'n integer' if integer else ' number'}"
                            f" in [{lo}, {hi}], got {v!r:.40}")
    return v


def from_manifest(section: object, num_classes: int) -> tuple[PriorConfig, np.ndarray]:
    """(config, shipped prior) of a manifest's ``label_shift`` section, checked field by
    field; :class:`ManifestError` names the field that is wrong."""
    if not isinstance(section, Mapping):
        raise ManifestError(f"label_shift must be an object, got {type(section).__name__}")
    if not isinstance(section.get("score"), str) or section["score"] not in SCORES:
        raise ManifestError(f"label_shift.score must be one of {sorted(SCORES)}, got "
                            f"{section.get('score')!r:.40}")
    prior = section.get("prior")
    if (not isinstance(prior, list) or len(prior) != num_classes
            or not all(isinstance(p, int | float) and not isinstance(p, bool)
                       and math.isfinite(p) and p > 0 for p in prior)):
        raise ManifestError(f"label_shift.prior must be {num_classes} positive numbers, one "
                            "per class")
    config = PriorConfig(
        window=int(_number(section, "window", 1, 1 << 20, integer=True)),
        strength=float(_number(section, "strength", 1e-6, 1e6)),
        min_count=int(_number(section, "min_count", 1, 1 << 20, integer=True)),
        surprise=float(_number(section, "surprise", 0.0, 0.999)),
        score=str(section["score"]),
        threshold=float(_number(section, "threshold", 0.0, 2.0)))
    shipped = np.asarray(prior, dtype=np.float64)
    return config, shipped / shipped.sum()


class StreamPrior:
    """The stream's class prior, followed online; the posterior adjusted by it."""

    def __init__(self, shipped: np.ndarray, config: PriorConfig) -> None:
        self.config = config
        self.shipped = np.asarray(shipped, dtype=np.float64) / np.sum(shipped)
        # Plain lists: a handful of classes is faster in Python than through numpy.
        self._pseudo = [config.strength * float(p) for p in self.shipped]
        self._log_shipped = [math.log(float(p)) for p in self.shipped]
        self._labels: collections.deque[int] = collections.deque(maxlen=config.window)
        self._counts = [0] * len(self.shipped)
        self._row = get_score(config.score).row
        self._shift: list[float] | None = None  # log pi_t - log pi_s, once in use
        self.resets = 0
        self.enabled = True  # the audit drops it when it breaks the target

    @property
    def shift(self) -> np.ndarray | None:
        """``log pi_t - log pi_s`` while the prior is in use, else None."""
        return None if self._shift is None else np.asarray(self._shift)

    def estimate(self) -> np.ndarray:
        """``pi_t``: the window's class counts smoothed towards the shipped prior."""
        n = len(self._labels) + self.config.strength
        return np.asarray([(c + q) / n for c, q in zip(self._counts, self._pseudo, strict=True)])

    def observe(self, label: int) -> None:
        """One answer of the stream (the cloud's, or the edge's own)."""
        if not 0 <= label < len(self._counts):
            return
        c = self.config
        if self._shift is not None and (self._counts[label] + self._pseudo[label]) / (
                len(self._labels) + c.strength) < c.surprise:
            self.reset()
        if len(self._labels) == self._labels.maxlen:
            self._counts[self._labels[0]] -= 1
        self._labels.append(label)
        self._counts[label] += 1
        if len(self._labels) >= c.min_count:
            n = len(self._labels) + c.strength
            self._shift = [math.log((k + q) / n) - ls for k, q, ls in
                           zip(self._counts, self._pseudo, self._log_shipped, strict=True)]

    def reset(self) -> None:
        """The stream moved: back to the shipped prior until the window refills."""
        self._labels.clear()
        self._counts = [0] * len(self._counts)
        self._shift = None
        self.resets += 1

    def answer_row(self, row: np.ndarray) -> tuple[int, float] | None:
        """(label, adjusted confidence) for one row of logits, or None when the prior is
        not in use; the confidence is 0 where the prior would flip the model's label."""
        if self._shift is None or not self.enabled:
            return None
        values = row.tolist()
        best = max(range(len(values)), key=values.__getitem__)
        adjusted = [v + s for v, s in zip(values, self._shift, strict=True)]
        top = max(adjusted)
        if adjusted[best] < top:
            return best, 0.0
        exps = [math.exp(v - top) for v in adjusted]
        return best, self._row(exps, sum(exps))

    def gate_row(self, row: np.ndarray) -> tuple[int, float, bool] | None:
        """The label-shift gate (:data:`cachenet.core.cascade.Adjust`) on one row."""
        out = self.answer_row(row)
        if out is None:
            return None
        return out[0], out[1], out[1] >= self.config.threshold

    def snapshot(self) -> dict[str, Any]:
        est = self.estimate()
        top = np.argsort(-est)[:3]
        return {"in_use": self._shift is not None and self.enabled, "enabled": self.enabled,
                "observed": len(self._labels), "resets": self.resets,
                "threshold": self.config.threshold,
                "top_classes": {str(int(c)): round(float(est[c]), 4) for c in top}}
