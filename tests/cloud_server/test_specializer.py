"""The cloud's specialiser: triggers, library, comparison, and the store it pushes through."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cachenet.exceptions import ConfigError
from cachenet.fleet import specialize as sp
from cachenet.fleet.store import ModelStore
from cloud_server.specializer import Specializer, SpecializerConfig, build_specializer

CONFIG = SpecializerConfig(target=0.95, min_requests=10, escalation_trigger=0.05)


@pytest.fixture
def specializer(digits_bundle, tmp_path):
    return build_specializer(digits_bundle[0], ModelStore(tmp_path / "store"), config=CONFIG,
                             cache_dir=tmp_path / "cache")


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


def hardest_classes(specializer, k: int = 3) -> list[int]:
    """The classes the general model answers least often: where specialising pays."""
    from cachenet.core.runtime import load_cache_model

    local = load_cache_model(specializer.base.root).predict(specializer.replay.hold_x).local
    full = specializer.replay.hold_full
    rates = [local[full == c].mean() for c in range(10)]
    return sorted(int(c) for c in np.argsort(rates)[:k])


def test_a_better_candidate_is_stored_for_the_agent_and_reused(specializer, digits_splits):
    classes = hardest_classes(specializer)
    x = digits_splits.test.x
    mine = np.isin(digits_splits.test.y, classes)
    specializer.observe("cam", x[mine][:30], digits_splits.test.y[mine][:30])
    hist = dict(zip(classes, (40, 30, 30), strict=True))
    report(specializer, "cam", {**hist, 5 if 5 not in classes else 4: 2}, requests=100,
           escalations=30)
    record = specializer.check("cam")
    assert record["classes"] == classes and record["source"] == "trained"
    cmp = record.get("comparison")
    assert record["outcome"] == "pushed", cmp  # more answered at the same target
    assert cmp["candidate_hit_rate"] > cmp["current_hit_rate"]
    assert cmp["candidate_agreement"] >= 0.9
    stored = specializer.store.list(agent="cam")
    assert [v.version for v in stored] == [record["version"]]
    assert specializer.store.current(agent="other") is None  # pushed for this agent only
    # A second agent seeing the same classes gets the library's model, calibrated anew.
    report(specializer, "cam2", hist, requests=100, escalations=30)
    again = specializer.check("cam2")
    assert again["source"] == "library"
    assert specializer.history[0] is record
    # A restarted server takes its library back from disk; a damaged entry is skipped.
    damaged = specializer.library_dir / "p0-damaged"
    damaged.mkdir()
    (damaged / "manifest.json").write_text("{")
    restarted = Specializer(base_bundle=specializer.base.root,
                            base_model=specializer.base_model, replay=specializer.replay,
                            store=specializer.store, config=CONFIG)
    assert {k: m.version for k, m in restarted.library.items()} == {
        tuple(classes): specializer.library[tuple(classes)].version}


def test_a_flat_histogram_is_skipped(specializer):
    report(specializer, "cam", dict.fromkeys(range(10), 10), requests=100, escalations=40)
    record = specializer.check("cam")
    assert record["outcome"] == "skipped" and "cover" in record["reason"]
    assert specializer.store.list(agent="cam") == []


def test_the_library_deletes_its_least_recently_used_idle_models(digits_bundle, tmp_path):
    config = dataclasses.replace(CONFIG, max_library=1)
    spec = build_specializer(digits_bundle[0], ModelStore(tmp_path / "store"), config=config,
                             cache_dir=tmp_path / "cache")
    hard = tuple(hardest_classes(spec))
    report(spec, "cam", dict.fromkeys(hard, 30), requests=100, escalations=30)
    pushed = spec.check("cam")
    assert pushed["outcome"] == "pushed", pushed.get("comparison")
    report(spec, "cam", dict.fromkeys(hard, 30), requests=200, escalations=30,
           version=pushed["version"])  # cam now runs it: it stays
    others = [c for c in range(10) if c not in hard]
    groups = [tuple(others[:2]), tuple(others[2:4])]
    for i, group in enumerate(groups):
        report(spec, f"other{i}", dict.fromkeys(group, 50), requests=100, escalations=30)
        assert spec.check(f"other{i}")["source"] == "trained"
    # Over the limit of 1: the model cam runs and the newest stay; the idle one is deleted.
    assert set(spec.library) == {hard, groups[1]}
    assert {p.resolve() for p in spec.library_dir.glob("p*")} == {
        m.root.resolve() for m in spec.library.values()}
    with pytest.raises(ConfigError, match="at least one"):
        SpecializerConfig(max_library=0)
