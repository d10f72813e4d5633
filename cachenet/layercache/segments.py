"""The edge's cache model as ONNX segments cut at its sites, run under ONNX Runtime.

Segment i < S takes the previous activation (the model input for segment 0)
and answers ``act`` and ``features``; segment S answers ``logits``.
:class:`SegmentRunner` is the :class:`cachenet.layercache.Runner` of the edge.
:func:`load_segments` opens them from a verified bundle and replays the
bundle's canary inputs through the chain: a segment that loads but computes
something else is refused (IntegrityError) before it answers anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cachenet.core.runtime import open_session
from cachenet.exceptions import IntegrityError

CHAIN_ATOL = 1e-4


class SegmentRunner:
    def __init__(self, sessions: list) -> None:
        self.sessions = sessions
        self.inputs = [s.get_inputs()[0].name for s in sessions]

    @classmethod
    def open(cls, paths: list[Path], threads: int | None = None) -> SegmentRunner:
        return cls([open_session(p, threads, "ONNX segment") for p in paths])

    def stage(self, i: int, state):
        x = state if i == 0 else state[0]
        out = self.sessions[i].run(None, {self.inputs[i]: np.ascontiguousarray(x)})
        return out if i < len(self.sessions) - 1 else out[0]

    def features(self, state) -> np.ndarray:
        return state[1]

    def take(self, state, rows: np.ndarray):
        return [state[0][rows], state[1][rows]]

    def logits(self, state) -> np.ndarray:
        return state

    def chain(self, x: np.ndarray) -> np.ndarray:
        """The logits of ``x`` through every segment."""
        state = x
        for i in range(len(self.sessions)):
            state = self.stage(i, state)
        return state


def load_segments(root: Path, files: list[str], canary_x: np.ndarray | None,
                  canary_logits: np.ndarray | None, threads: int | None = None
                  ) -> SegmentRunner:
    runner = SegmentRunner.open([Path(root) / f for f in files], threads)
    if canary_x is None or canary_logits is None:
        return runner
    try:
        got = runner.chain(np.ascontiguousarray(canary_x))
    except Exception as exc:  # onnxruntime's own error types become ours here
        raise IntegrityError(f"the layer-cache segments do not run on the canary inputs: "
                             f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    if got.shape != canary_logits.shape or not np.isfinite(got).all() \
            or float(np.abs(got - canary_logits).max()) > CHAIN_ATOL:
        raise IntegrityError("the layer-cache segments do not compute the cache model: their "
                             f"chain differs from the canary logits (limit {CHAIN_ATOL})")
    return runner
