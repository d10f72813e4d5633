"""The cloud's specialiser: triggers, library, comparison, and the store it pushes through."""

from __future__ import annotations

import numpy as np
import pytest

from cachenet import specialize as sp
from cachenet.store import ModelStore
from cloud_server.specializer import SpecializerConfig, build_specializer

CONFIG = SpecializerConfig(target=0.95, min_requests=10, escalation_trigger=0.05,
                           finetune=sp.FinetuneConfig(epochs=1, min_steps=150))


@pytest.fixture
def specializer(digits_bundle, tmp_path):
    return build_specializer(digits_bundle[0], ModelStore(tmp_path / "store"), config=CONFIG)


def report(spec, agent, hist, *, requests, escalations, version=""):
    spec.report(agent, version=version, requests=requests, escalations=escalations,
                histogram={str(k): v for k, v in hist.items()})


def test_checks_are_due_on_escalations_or_a_moved_histogram(specializer):
    report(specializer, "cam", {0: 50, 1: 50}, requests=100, escalations=2)
    assert not specializer.agents["cam"].due  # 2% escalated: below the trigger
    report(specializer, "cam", {0: 50, 1: 50}, requests=200, escalations=30)
    assert specializer.agents["cam"].due  # 28% of the last 100
    state = specializer.agents["cam"]
    state.due, state.made_for = False, sp.normalise_histogram({0: 1, 1: 1}, 10)
    report(specializer, "cam", {5: 60, 6: 40}, requests=300, escalations=30)
    assert state.due and state.escalation_rate == 0.0  # moved, though nothing escalated


def test_a_better_candidate_is_stored_for_the_agent_and_reused(specializer, digits_splits):
    x = digits_splits.test.x
    mine = np.isin(digits_splits.test.y, [0, 1, 6])
    specializer.observe("cam", x[mine][:30], digits_splits.test.y[mine][:30])
    report(specializer, "cam", {0: 40, 1: 30, 6: 30, 3: 2}, requests=100, escalations=30)
    record = specializer.check("cam")
    assert record["classes"] == [0, 1, 6] and record["source"] == "trained"
    cmp = record["comparison"]
    assert record["outcome"] == ("pushed" if cmp["better"] else "rejected")
    stored = specializer.store.list(agent="cam")
    assert len(stored) == (1 if cmp["better"] else 0)
    if cmp["better"]:
        assert stored[0].version == record["version"]
        # A second agent seeing the same classes gets the library's model, calibrated anew.
        report(specializer, "cam2", {0: 40, 1: 30, 6: 30}, requests=100, escalations=30)
        again = specializer.check("cam2")
        assert again["source"] == "library"
    assert specializer.history[0] is record


def test_a_flat_histogram_is_skipped(specializer):
    report(specializer, "cam", dict.fromkeys(range(10), 10), requests=100, escalations=40)
    record = specializer.check("cam")
    assert record["outcome"] == "skipped" and "cover" in record["reason"]
    assert specializer.store.list(agent="cam") == []
