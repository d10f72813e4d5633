"""The ``context`` workload: its trace, and the fleet benchmark that runs it."""

from __future__ import annotations

import json

import numpy as np


def test_a_context_trace_holds_its_classes_and_shows_each_image_once():
    from bench.traces import context_trace

    labels = np.repeat(np.arange(10), 50)
    idx, ctx, groups = context_trace(labels, 3, 80, seed=4)
    assert len(idx) == len(ctx) == 240 and ctx.tolist() == sorted(ctx.tolist())
    for c, group in enumerate(groups):
        assert 2 <= len(group) <= 3 and len(set(group)) == len(group)
        shown = idx[ctx == c]
        assert set(labels[shown].tolist()) <= set(group)
        for k in group:  # each image once, until its class has none left to show
            mine = shown[labels[shown] == k]
            assert len(set(mine.tolist())) == min(len(mine), 50)
    again = context_trace(labels, 3, 80, seed=4)
    assert np.array_equal(again[0], idx)
    # More requests than a context's images: they repeat, from its classes only.
    idx, ctx, groups = context_trace(labels, 1, 400, seed=1)
    assert set(labels[idx].tolist()) <= set(groups[0]) and len(idx) == 400


def test_the_context_benchmark_runs_every_system_on_every_device(digits_bundle, tmp_path):
    from bench.context import SYSTEMS, main

    assert main(["--bundle", str(digits_bundle[0]), "--dataset", "digits", "--devices", "2",
                 "--contexts", "2", "--per-context", "25", "--network", "lan",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "context.json").read_text())
    assert result["provenance"]["command"].startswith("python -m bench.context --bundle ")
    assert set(result["systems"]) == set(SYSTEMS) and len(result["contexts"]) == 2
    for name, entry in result["systems"].items():
        overall, devices = entry["overall"], entry["devices"]
        assert overall["n"] == 100 and [d["n"] for d in devices] == [50, 50]
        assert overall["fallbacks"] == 0
        assert overall["edge_answers"] == sum(d["edge_answers"] for d in devices)
        assert overall["edge_answers"] == round(100 * (1 - overall["escalation_rate"]))
        if name == "cloud_only":
            assert overall["escalation_rate"] == 1.0 and overall["edge_answers"] == 0
        if name == "oracle":
            assert overall["edge_disagreements"] == 0
    for d in result["systems"]["cachenet_specialized"]["devices"]:
        assert [f["context"] for f in d["first_specialized"]] == [0, 1]
        assert d["versions_stored"] >= d["pushes_applied"] >= 0 and d["push_bytes"] >= 0
    assert "specializing-cloud.log" in {p.name for p in tmp_path.iterdir()}


def test_the_steps_benchmark_counts_edge_answers_by_step(digits_bundle, digits_splits, tmp_path):
    from bench.steps import main
    from bench.traces import make_trace, save_trace

    idx = make_trace("runs50", digits_splits.test.y, 40, seed=2)
    save_trace(tmp_path / "suite" / "traces" / "runs50.npz", "runs50", idx,
               digits_splits.test.y, 2)
    out = tmp_path / "steps.json"
    assert main(["--bundle", str(digits_bundle[0]), "--suite", str(tmp_path / "suite"),
                 "--dataset", "digits", "--traces", "runs50",
                 "--configs", "defaults,no-label-shift", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["traces"]["runs50"]["configs"]
    assert set(rows) == {"gate alone (offline)", "defaults", "no-label-shift"}
    assert "prior" not in rows["no-label-shift"]
    for steps in rows.values():
        assert sum(s["answers"] for s in steps.values()) <= 40
        assert all(0 <= s["wrong"] <= s["answers"] for s in steps.values())
    # The bundle's gate answers some digits and escalates others (the fixture's budget).
    assert 0 < rows["gate alone (offline)"]["model"]["answers"] < 40
