"""The benchmark suite: its traces, and one tiny real run on the embedded digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.traces import TRACES, confusable_classes, make_trace


def _mean_run(labels: np.ndarray) -> float:
    return len(labels) / (1 + np.count_nonzero(np.diff(labels)))


def test_traces_have_the_locality_their_names_promise():
    labels = np.repeat(np.arange(10), 100)
    got = {name: labels[make_trace(name, labels, 4000, seed=3, classes=np.array([2, 7]))]
           for name in TRACES}
    assert _mean_run(got["iid"]) < 1.5
    assert 8 < _mean_run(got["runs10"]) < 14 and 40 < _mean_run(got["runs50"]) < 80
    assert 8 < _mean_run(got["markov90"]) < 12  # stay 0.9: runs of 10
    assert 20 < _mean_run(make_trace("video", np.arange(1000), 4000, seed=3)) < 45  # objects
    counts = np.sort(np.bincount(got["zipf"], minlength=10))[::-1]
    assert counts[0] > 3 * counts[4] and counts[0] / 4000 == pytest.approx(0.42, abs=0.05)
    assert np.array_equal(make_trace("zipf", labels, 100, seed=3),
                          make_trace("zipf", labels, 100, seed=3))
    with pytest.raises(ValueError, match="unknown trace"):
        make_trace("bursty", labels, 10)
    # confusable: runs over the classes given, and only those.
    assert set(got["confusable"].tolist()) == {2, 7} and _mean_run(got["confusable"]) > 30
    with pytest.raises(ValueError, match="needs its classes"):
        make_trace("confusable", labels, 10)


def test_the_confusable_classes_are_those_the_cache_model_agrees_on_least():
    full = np.repeat(np.arange(5), 10)
    logits = np.eye(5)[full]
    for c, wrong in ((3, 6), (1, 4), (4, 2)):  # class 3 worst, then 1, then 4
        rows = np.flatnonzero(full == c)[:wrong]
        logits[rows] = np.eye(5)[(c + 1) % 5]
    assert confusable_classes(logits, full, k=3).tolist() == [3, 1, 4]


@pytest.mark.slow
def test_quick_suite_on_digits_writes_rows_report_and_plots(digits_bundle, layered_bundle,
                                                           tmp_path):
    from bench.suite import main

    assert main(["--bundle", str(digits_bundle[0]), "--dataset", "digits", "--quick",
                 "--requests", "40", "--no-micro", "--out", str(tmp_path),
                 "--library", str(tmp_path / "library"),
                 "--layered-bundle", str(layered_bundle)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["provenance"]["command"].startswith("python -m bench.suite --bundle ")
    assert summary["provenance"]["machine"]["cpus"] >= 1
    rows = summary["rows"]
    assert len(rows) == 2 * 2 * 7  # traces x networks x systems, every one run
    by = {(r["stream"], r["network"], r["system"]): r for r in rows}
    for stream in ("runs50", "iid"):
        for net in ("lan", "4g"):
            assert by[stream, net, "edge_only"]["escalation_rate"] == 0.0
            # No request crosses the WAN (one is over 256 bytes); an HTTP/2 ping (17) may.
            assert by[stream, net, "edge_only"]["bytes_up"] < 100
            assert by[stream, net, "cloud_only"]["escalation_rate"] == 1.0
            assert by[stream, net, "oracle"]["agreement"] == 1.0  # escalates every mismatch
            oracle = by[stream, net, "oracle"]
            assert oracle["edge_disagreements"] == 0
            assert oracle["edge_agreement"] in (None, 1.0)
            assert by[stream, net, "cloud_only"]["edge_answers"] == 0
            for r in (by[stream, net, s] for s in ("edge_only", "cachenet", "fixed_threshold")):
                assert r["edge_answers"] == round(r["n"] * (1 - r["escalation_rate"]))
                assert 0 <= r["edge_disagreements"] <= r["edge_answers"]
            assert by[stream, net, "cloud_only"]["fallbacks"] == 0
            specialized = by[stream, net, "cachenet_specialized"]
            assert specialized["n"] == 40 and specialized["pushes_rejected"] == 0
            assert specialized["fallbacks"] == 0  # the specialising cloud answered them all
            layered = by[stream, net, "cachenet_layercache"]
            assert layered["n"] == 40 and layered["fallbacks"] == 0
            assert 0.0 <= layered["layer_hits"] <= 1.0 - layered["escalation_rate"]
            cachenet = by[stream, net, "cachenet"]  # a fresh agent, audited
            assert cachenet["audited"] >= 0 and "audit_bound" in cachenet
            assert sum(v for k, v in cachenet.items() if k.startswith("step_")) == \
                pytest.approx(1.0 - cachenet["escalation_rate"])
            assert "first_push_request" in specialized
            assert cachenet["class_changes"] >= (1 if stream == "runs50" else 0)
    assert by["runs50", "4g", "cloud_only"]["p50_ms"] >= 50.0  # crossed the 50 ms WAN
    report = (tmp_path / "report.md").read_text()
    assert "    python -m bench.suite --bundle" in report and "Commit: " in report
    assert "## What the specialising cloud did" in report
    assert "specialisation ready" in (tmp_path / "specializing-cloud.log").read_text()
    assert "## Headline: runs50 at 4g" in report and "cachenet_specialized" in report
    assert "## Goals per trace" in report and "- runs50 at 4g: `cachenet` " in report
    assert "Agreement of the edge's answers with the full model" in report
    assert "audit (n / agreement / bound)" in report and "under 20%" in report  # either way
    assert (tmp_path / "runs50-4g.png").stat().st_size > 10_000
    assert {p.name for p in (tmp_path / "traces").iterdir()} == {"runs50.npz", "iid.npz"}
