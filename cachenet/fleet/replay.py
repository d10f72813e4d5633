"""The cloud's replay data: its own inputs, labelled by the full model.

Partition models learn from it (:mod:`cachenet.fleet.partition`) and are
compared on its held-out part (:mod:`cachenet.fleet.specialize`). The full
model's answers are the slow part, so they can be kept in a file and read back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from cachenet.core.gate import softmax
from cachenet.toolchain.train import predict_logits

log = logging.getLogger(__name__)


@dataclass
class ReplayData:
    """The cloud's own data with the full model's answers as labels."""

    train_x: np.ndarray
    train_full: np.ndarray  # full-model labels
    hold_x: np.ndarray
    hold_full: np.ndarray
    num_classes: int
    augment: str = "none"
    train_probs: np.ndarray | None = None  # the full model's softmax on train_x

    @classmethod
    def from_splits(cls, splits: Any, full_model: nn.Module, *,
                    cache: Path | None = None) -> ReplayData:
        """The training split to learn from and the calibration split held out, with the
        full model's answers. Those are the slow part (the full model over every input);
        with ``cache`` (an ``.npz`` path) they are read from it, or written to it."""
        c, h, _ = splits.input_shape
        answers = _read_answers(cache, len(splits.train.x), len(splits.calib.x))
        if answers is None:
            answers = {"train_probs": softmax(predict_logits(full_model, splits.train.x)
                                              ).astype(np.float32),
                       "hold_full": predict_logits(full_model, splits.calib.x).argmax(1)}
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(cache.name + ".tmp.npz")
                np.savez(tmp, **answers)
                tmp.replace(cache)
        probs = answers["train_probs"]
        return cls(splits.train.x, probs.argmax(1), splits.calib.x, answers["hold_full"],
                   len(splits.classes), ("crop-flip" if c == 3 else "crop") if h >= 16
                   else "none", probs)


def _read_answers(cache: Path | None, n_train: int, n_hold: int) -> dict[str, np.ndarray] | None:
    """The full model's answers saved by :meth:`ReplayData.from_splits`, if they fit."""
    if cache is None or not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            answers = {"train_probs": z["train_probs"], "hold_full": z["hold_full"]}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring the replay answers in %s: %s", cache, exc)
        return None
    if len(answers["train_probs"]) != n_train or len(answers["hold_full"]) != n_hold:
        return None
    return answers


