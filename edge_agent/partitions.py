"""Which cache model answers: the general one, or one of the k partition models held.

The cloud pushes *partition models* (:mod:`cachenet.fleet.specialize`), each sure of
a few classes and escalating the rest. The agent keeps the general model and up
to ``k`` partition models, least recently used out first, and switches the
active one locally, without asking the cloud, when the recent answers (the
edge's and the cloud's) show that the stream moved: if another held model covers
the recent labels
well (``min_coverage``) and better than the active one, it becomes active; if
the active one covers few of them (``1 - min_coverage``) and no held model fits,
the general model does. numpy only.
"""

from __future__ import annotations

import collections
import logging
import threading

from cachenet.core.runtime import CacheModel

log = logging.getLogger(__name__)


class ModelSet:
    def __init__(self, general: CacheModel, *, k: int = 3, window: int = 16,
                 min_coverage: float = 0.75) -> None:
        self.general = general
        self.k = k
        self.min_coverage = min_coverage
        self.partitions: collections.OrderedDict[str, CacheModel] = collections.OrderedDict()
        self.active = general
        self.recent: collections.deque[int] = collections.deque(maxlen=window)
        self.switches = 0
        self._lock = threading.Lock()  # adds come from the reload thread

    def add(self, model: CacheModel) -> CacheModel:
        """Hold a newly loaded model and make it active; returns it."""
        with self._lock:
            return self._add(model)

    def _add(self, model: CacheModel) -> CacheModel:
        if model.partition is None:
            self.general = model
        else:
            self.partitions[model.version] = model
            self.partitions.move_to_end(model.version)
            while len(self.partitions) > self.k:
                old, _ = self.partitions.popitem(last=False)
                log.info("dropped partition model %s (holding %d)", old, self.k)
        self.active = model
        self.recent.clear()
        return model

    def _coverage(self, model: CacheModel) -> float:
        return sum(model.covers(label) for label in self.recent) / len(self.recent)

    def observe(self, label: int, *, hit: bool) -> CacheModel | None:
        """Note an answer's label (``hit``: the active model answered it itself); the
        model switched to, if the stream has moved. A hit cannot show a move, so only
        the other answers are checked."""
        with self._lock:
            self.recent.append(label)
            return None if hit else self._check()

    def _check(self) -> CacheModel | None:
        if len(self.recent) < (self.recent.maxlen or 1) or not self.partitions:
            return None
        # The general model covers everything, but any partition that fits is better.
        active_cov = self._coverage(self.active) if self.active.partition is not None else 0.0
        others = [m for m in self.partitions.values() if m is not self.active]
        best = max(others, key=self._coverage, default=None)
        if best is not None and self._coverage(best) >= max(self.min_coverage,
                                                             active_cov + 1e-9):
            target = best  # a held model fits the recent answers better
        elif self.active.partition is not None and active_cov <= 1 - self.min_coverage:
            target = self.general  # none fits: the general model, until the cloud pushes one
        else:
            return None
        if target is self.active:
            return None
        if target.partition is not None:
            self.partitions.move_to_end(target.version)
        log.info("stream moved (recent cloud labels %s): switching from %s to %s",
                 sorted(set(self.recent)), self.active.manifest.name, target.manifest.name)
        self.active = target
        self.switches += 1
        self.recent.clear()
        return target

    def retire(self, version: str) -> bool:
        """Stop holding the partition model ``version`` (its audit broke): the general
        model answers in its place. Whether it was held."""
        with self._lock:
            model = self.partitions.pop(version, None)
            if model is None:
                return False
            if self.active is model:
                self.active = self.general
                self.recent.clear()
            log.warning("retired partition model %s: its audit broke the target", version)
            return True

    def held(self) -> list[CacheModel]:
        """Every model held: the general one and the partition models."""
        with self._lock:
            return [self.general, *self.partitions.values()]

    def snapshot(self) -> dict[str, object]:
        return {"active": self.active.version, "general": self.general.version,
                "partitions": {v: list(m.partition or ()) for v, m in self.partitions.items()},
                "switches": self.switches}
