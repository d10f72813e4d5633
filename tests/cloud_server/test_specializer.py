"""The cloud's specialiser: triggers, library, comparison, and the store it pushes through.

Whether a candidate is pushed must not depend on how well a model happened to train
on this machine, so these tests make partition models with the ``oracle`` trainer
(the full model folded into the partition: it answers only what the full model
answers) or with a trainer whose model never answers anything, and compare them with
a general model whose gate answers nothing (:func:`answers_nothing`): an oracle that
passes its bound then answers more by construction, whichever classes it covers.
Fine-tuning itself is tested in ``tests/cachenet/fleet``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cachenet.exceptions import ConfigError
from cachenet.fleet import specialize as sp
from cachenet.fleet.store import ModelStore
from cloud_server.specializer import Specializer, SpecializerConfig, build_specializer

# A target whose bound passes with few draws: the oracle agrees wherever it answers, so
# it is feasible whenever its classes have 29 answerable held-out digits (they have ~90).
CONFIG = SpecializerConfig(target=0.9, min_requests=10, escalation_trigger=0.05,
                          trainer="oracle")


@pytest.fixture(scope="module")
def answers_nothing(digits_bundle, tmp_path_factory):
    """The digits bundle with a gate above every score: the general model escalates all."""
    from cachenet.core.bundle import repack
    from cachenet.core.calibration import NEVER

    data = digits_bundle[0]
    gate = {"score": "max_softmax", "threshold": NEVER}
    return repack(data, tmp_path_factory.mktemp("never") / "b",
                  fields={"gate": gate, "variant_gates": {}, "label_shift": None}).root


@pytest.fixture
def specializer(answers_nothing, tmp_path):
    return build_specializer(answers_nothing, ModelStore(tmp_path / "store"), config=CONFIG,
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


def test_a_better_candidate_is_stored_for_the_agent_and_reused(specializer, digits_splits):
    classes = [2, 3, 7]
    x = digits_splits.test.x
    mine = np.isin(digits_splits.test.y, classes)
    specializer.observe("cam", x[mine][:30], digits_splits.test.y[mine][:30])
    hist = dict(zip(classes, (40, 30, 30), strict=True))
    report(specializer, "cam", {**hist, 5 if 5 not in classes else 4: 2}, requests=100,
           escalations=30)
    record = specializer.check("cam")
    assert record["classes"] == classes and record["source"] == "trained"
    cmp = record.get("comparison")
    # The oracle agrees with the full model wherever it answers, so its gate is feasible
    # and it answers more than the general model at the same target.
    assert cmp["calibration"]["feasible"] and cmp["calibration"]["agreement"] == 1.0, cmp
    assert record["outcome"] == "pushed", cmp
    assert cmp["candidate_hit_rate"] > cmp["current_hit_rate"]
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
                            store=specializer.store, config=CONFIG,
                            trainer=specializer.trainer)
    assert {k: m.version for k, m in restarted.library.items()} == {
        tuple(classes): specializer.library[tuple(classes)].version}


class NeverSure(torch.nn.Module):
    """A partition model that calls everything "other": it answers nothing itself."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.register_buffer("bias", torch.tensor([0.0] * classes + [10.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :1] * 0.0 + self.bias


def test_a_candidate_that_answers_no_more_is_rejected_and_not_stored(answers_nothing,
                                                                     tmp_path):
    spec = build_specializer(answers_nothing, ModelStore(tmp_path / "store"), config=CONFIG,
                             cache_dir=tmp_path / "cache")
    spec.trainer = lambda classes, hard, stop: NeverSure(len(classes))
    report(spec, "cam", {2: 50, 3: 50}, requests=100, escalations=30)
    record = spec.check("cam")
    cmp = record["comparison"]
    # It hands everything over to the general model: exactly what the agent runs now.
    assert record["outcome"] == "rejected" and not cmp["calibration"]["feasible"]
    assert cmp["candidate_hit_rate"] == cmp["current_hit_rate"]
    assert spec.store.list(agent="cam") == []
    assert record["source"] == "trained" and spec.agents["cam"].rejected


def test_a_flat_histogram_is_skipped(specializer):
    report(specializer, "cam", dict.fromkeys(range(10), 10), requests=100, escalations=40)
    record = specializer.check("cam")
    assert record["outcome"] == "skipped" and "cover" in record["reason"]
    assert specializer.store.list(agent="cam") == []


def test_the_library_deletes_its_least_recently_used_idle_models(answers_nothing, tmp_path):
    config = dataclasses.replace(CONFIG, max_library=1)
    spec = build_specializer(answers_nothing, ModelStore(tmp_path / "store"), config=config,
                             cache_dir=tmp_path / "cache")
    hard = (2, 3, 7)
    report(spec, "cam", dict.fromkeys(hard, 30), requests=100, escalations=30)
    pushed = spec.check("cam")
    assert pushed["outcome"] == "pushed", pushed.get("comparison")
    report(spec, "cam", dict.fromkeys(hard, 30), requests=200, escalations=30,
           version=pushed["version"])  # cam now runs it: it stays
    others = [c for c in range(10) if c not in hard]
    # Three classes each, well clear of the draws the bound needs (see CONFIG).
    groups = [tuple(others[:3]), tuple(others[3:6])]
    for i, group in enumerate(groups):
        report(spec, f"other{i}", dict.fromkeys(group, 33), requests=100, escalations=30)
        record = spec.check(f"other{i}")
        assert record["source"] == "trained" and record["outcome"] == "pushed"
        spec.acknowledged(f"other{i}", record["version"], applied=False)  # turned down: idle
    # Over the limit of 1: the model cam runs and the newest stay; the idle one is deleted.
    assert set(spec.library) == {hard, groups[1]}
    assert {p.resolve() for p in spec.library_dir.glob("p*")} == {
        m.root.resolve() for m in spec.library.values()}
    with pytest.raises(ConfigError, match="at least one"):
        SpecializerConfig(max_library=0)


def test_the_head_trainer_stores_head_bundles_on_the_general_model(answers_nothing, digits_splits,
                                                                   tmp_path):
    """Whether a trained head beats the general model depends on training: asserted is
    what it is and how it is stored, not whether it won."""
    spec = build_specializer(answers_nothing, ModelStore(tmp_path / "store"),
                             config=dataclasses.replace(CONFIG, trainer="head"),
                             cache_dir=tmp_path / "cache")
    classes = [2, 3, 7]
    report(spec, "cam", {2: 40, 3: 30, 7: 30}, requests=100, escalations=30)
    record = spec.check("cam")
    assert record["source"] == "trained" and record["outcome"] in ("pushed", "rejected")
    made = spec.library[tuple(classes)]
    base = spec.base
    assert made.head["base"] == base.version and made.head["file"] == "head.npz"
    assert made.files["model.onnx"]["sha256"] == base.files[base.model_file()]["sha256"]
    assert made.data["partition"]["trainer"] == "head"
    # Scored from the held-out features computed once, as an agent computes it.
    idx = np.arange(0, len(spec.replay.hold_x), 7)
    for root in (made.root, base.root):
        assert np.abs(spec._logits(root, idx)
                      - sp.bundle_logits(root, spec.replay.hold_x[idx])).max() < 1e-4
    if record["outcome"] == "pushed":
        from cachenet.core.manifest import read_manifest

        stored = spec.store.current(agent="cam")
        assert stored.version == record["version"]
        assert read_manifest(Path(stored.path)).head == made.head
