"""The layer-cache cascade on a batch: the one definition, for the cloud and the edge.

A model is cut into stages 0..S: stage i < S ends at site i, stage S ends in
the logits. A :class:`Runner` runs stages on some engine (torch segments in
the cloud, ONNX Runtime segments on the edge) and gives the site features.

:meth:`LayerCascade.run` on a batch: after stage i, every rule at site i (in
order) looks the remaining rows up; rows it answers leave the batch (the rest
go on), except the share auto-refresh picks, which go on to be re-checked.
Rows no rule answers end in the model's logits. The returned :class:`Answered`
says per row which rule answered (``by``, -1: none), the multiply-adds spent,
and keeps the site features of the rows that went to the end, so that
:meth:`LayerCascade.settle` can fill the tables with the full model's answers:
at once in the cloud (its model *is* the full model), when the cloud answers
an escalation on the edge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from cachenet.layercache.control import Refresh, tightened
from cachenet.layercache.kinds import SiteCache

log = logging.getLogger(__name__)


class Runner(Protocol):
    def stage(self, i: int, state: Any) -> Any:
        """Run stage ``i`` on ``state`` (the input for stage 0)."""

    def features(self, state: Any) -> np.ndarray:
        """Site features (N x D, float32) of the state a stage before the last left."""

    def take(self, state: Any, rows: np.ndarray) -> Any:
        """The state of ``rows`` only."""

    def logits(self, state: Any) -> np.ndarray:
        """N x K logits of the state the last stage left."""


@dataclass
class Rule:
    site: int
    name: str  # "<site>:<kind>"
    cache: SiteCache
    threshold: float
    refresh: Refresh | None = None


@dataclass
class Answered:
    labels: np.ndarray  # N
    logits: np.ndarray  # N x K: the model's, or the rule's (a head's, or one-hot for tables)
    by: np.ndarray  # N: rule index, -1 where the model answered
    macs: np.ndarray  # N: multiply-adds spent, lookups included
    #: per site: (rows, features) of the rows that reached the end
    features: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    #: rows a rule answered but refresh sent on: (row, rule, cached label)
    checks: list[tuple[int, int, int]] = field(default_factory=list)


def table_logits(labels: np.ndarray, conf: np.ndarray, k: int) -> np.ndarray:
    """Logits for a table's answer: log-probabilities with ``conf`` on the label."""
    p = np.clip(conf, 1e-6, 1 - 1e-6)[:, None]
    out = np.log((1 - p) / max(k - 1, 1)) * np.ones((len(labels), k))
    out[np.arange(len(labels)), labels] = np.log(p[:, 0])
    return out.astype(np.float32)


class LayerCascade:
    """Rules at the sites of a model cut into ``len(site_macs) + 1`` stages."""

    def __init__(self, site_names: list[str], site_macs: list[int], full_macs: int,
                 rules: list[Rule], num_classes: int, fill_confidence: float = 0.0) -> None:
        self.site_names = site_names
        #: tables learn only answers the full model gave with at least this confidence
        #: (its top softmax probability): an unsure answer is seldom the same for a shifted,
        #: darker or noisier view of the same object
        self.fill_confidence = fill_confidence
        self.site_macs = site_macs  # cumulative, to the end of each site's stage
        self.full_macs = full_macs
        self.rules = rules
        self.num_classes = num_classes
        self.by_site = [[j for j, r in enumerate(rules) if r.site == i]
                        for i in range(len(site_names))]

    @property
    def stages(self) -> int:
        return len(self.site_names) + 1

    def run(self, runner: Runner, x: Any, n: int) -> Answered:
        """Answer the ``n`` rows of ``x`` (see the module docstring)."""
        k = self.num_classes
        out = Answered(np.zeros(n, np.int64), np.zeros((n, k), np.float32),
                       np.full(n, -1, np.int64), np.zeros(n, np.int64))
        alive = np.arange(n)
        state = x
        spent = 0
        last = 0
        for i in range(len(self.site_names)):
            state = runner.stage(i, state)
            last = i + 1
            feats = (runner.features(state) if self.by_site[i]
                     else np.zeros((len(alive), 0), np.float32))
            out.features.append((alive.copy(), feats))
            going = np.ones(len(alive), bool)
            for j in self.by_site[i]:
                rule = self.rules[j]
                spent += rule.cache.lookup_macs
                open_rows = np.flatnonzero(going)
                if not len(open_rows):
                    break
                found = rule.cache.lookup(feats[open_rows])
                hit = found.conf >= rule.threshold
                if not hit.any():
                    continue
                hit_rows = open_rows[hit]
                check = rule.refresh.pick(len(hit_rows)) if rule.refresh else np.zeros(
                    len(hit_rows), bool)
                labels = found.labels[hit]
                logits = (found.logits[hit] if found.logits is not None
                          else table_logits(labels, found.conf[hit], k))
                for r, lab, chk in zip(hit_rows, labels, check, strict=True):
                    if chk:
                        out.checks.append((int(alive[r]), j, int(lab)))
                answer = hit_rows[~check]
                glob = alive[answer]
                out.labels[glob], out.logits[glob] = labels[~check], logits[~check]
                out.by[glob] = j
                out.macs[glob] = self.site_macs[i] + spent
                going[answer] = False
            if not going.all():
                keep = np.flatnonzero(going)
                alive = alive[keep]
                if not len(alive):
                    break
                state = runner.take(state, keep)
        if len(alive):
            for i in range(last, len(self.site_names) + 1):
                state = runner.stage(i, state)
            logits = runner.logits(state)
            out.logits[alive], out.labels[alive] = logits, logits.argmax(1)
            out.macs[alive] = self.full_macs + spent
        return out

    def settle(self, answered: Answered, rows: np.ndarray, labels: np.ndarray,
               confidences: np.ndarray | None = None) -> None:
        """The full model answered ``rows`` with ``labels`` (its top softmax probabilities:
        ``confidences``): fill every table with the sure ones and score the refresh
        re-checks among them all (a rule whose error breaks its bound is tightened)."""
        rows = np.asarray(rows, np.int64)
        labels = np.asarray(labels, np.int64)
        full = dict(zip(rows.tolist(), labels.tolist(), strict=True))
        keep = np.ones(len(rows), bool)
        if confidences is not None and self.fill_confidence > 0:
            keep = np.asarray(confidences) >= self.fill_confidence
            # A re-check the cache got wrong is learned whatever its confidence: the
            # stored answer is contradicted (an approximate key's cell becomes mixed).
            wrong = {row for row, _, cached in answered.checks if full.get(row, cached) != cached}
            keep |= np.isin(rows, list(wrong))
        self._fill(answered, rows[keep], labels[keep])
        self._recheck(answered, full)

    def _fill(self, answered: Answered, rows: np.ndarray, labels: np.ndarray) -> None:
        full = dict(zip(rows.tolist(), labels.tolist(), strict=True))
        for i, (site_rows, feats) in enumerate(answered.features):
            if not feats.shape[1]:
                continue
            pick = np.flatnonzero(np.isin(site_rows, rows))
            if not len(pick):
                continue
            got = np.asarray([full[int(r)] for r in site_rows[pick]], np.int64)
            for j in self.by_site[i]:
                self.rules[j].cache.fill(feats[pick], got)

    def _recheck(self, answered: Answered, full: dict[int, int]) -> None:
        checks: dict[int, list[bool]] = {}
        for row, j, cached in answered.checks:
            if row in full:
                checks.setdefault(j, []).append(cached == full[row])
        for j, agree in checks.items():
            rule = self.rules[j]
            if rule.refresh is not None and rule.refresh.record(np.asarray(agree)):
                old, rule.threshold = rule.threshold, tightened(rule.threshold)
                log.warning("layer cache %s disagreed with the full model beyond its bound: "
                            "threshold %.4f -> %.4f", rule.name, old, rule.threshold)

    def snapshot(self) -> dict[str, Any]:
        return {r.name: {"threshold": r.threshold,
                         **(r.refresh.snapshot() if r.refresh else {})} for r in self.rules}
