"""The edge's layer caches: ONNX segments under ONNX Runtime, filled from the cloud's answers."""

from __future__ import annotations

import shutil
import signal

import numpy as np
import pytest

from cachenet.core.bundle import repack
from cachenet.core.calibration import NEVER
from cachenet.core.runtime import load_cache_model
from cachenet.exceptions import IntegrityError
from cachenet.layercache.edge import load_edge_layers
from cachenet.layercache.segments import SegmentRunner
from edge_agent.client import EdgeClient
from tests.layercaches import distinct_rows, key_rule, rewrite
from tests.processes import start_cloud, start_edge
from tests.processes import wait_until as wait_for


def segments(bundle) -> list:
    m = load_cache_model(bundle).manifest
    section = m.data["layer_cache"]
    return [bundle / s["segment"] for s in section["sites"]] + [
        bundle / section["final"]["segment"]]


def test_segments_equal_the_cache_model(layered_bundle, digits_splits):
    model = load_cache_model(layered_bundle)
    x = digits_splits.test.x
    got = SegmentRunner.open(segments(layered_bundle)).chain(x)
    assert np.abs(got - model.logits(x)).max() < 1e-5


@pytest.fixture(scope="module")
def controlled(layered_bundle, digits_splits, tmp_path_factory):
    """An empty akey table at the first site that hits after one answer, and a gate that
    escalates everything: a first sighting goes to the cloud, a second need not. With it,
    six test inputs that each have a cell of their own."""
    work = tmp_path_factory.mktemp("edge-layered")
    runner = SegmentRunner.open(segments(layered_bundle))
    feats = runner.features(runner.stage(0, digits_splits.train.x))
    site = load_cache_model(layered_bundle).manifest.data["layer_cache"]["sites"][0]["name"]
    rule, files = key_rule(feats, np.zeros(0, np.int64), 10, site=site, work=work,
                           name="edge-akey")
    test_feats = runner.features(runner.stage(0, digits_splits.test.x))
    rows = distinct_rows(feats, test_feats, 10, 6)
    return rewrite(layered_bundle, work / "bundle", edge_rules=[rule], files=files,
                   gate_threshold=NEVER), rows


def test_a_re_seen_input_is_answered_on_the_device_after_one_escalation(
        controlled, digits_splits, tmp_path):
    bundle, rows = controlled
    cloud = start_cloud(bundle, tmp_path)
    edge = start_edge(bundle, tmp_path, "--cloud", f"127.0.0.1:{cloud.info['port']}",
                      "--deadline-ms", "5000")
    try:
        with EdgeClient(edge.info["endpoint"]) as c:
            x = digits_splits.test.x[rows]
            first = [c.infer(x[i], timeout=10) for i in range(len(x))]
            second = [c.infer(x[i], timeout=10) for i in range(len(x))]
    finally:
        assert edge.stop() == 0 and cloud.stop() == 0
    assert [a["source"] for a in first] == ["cloud"] * 6
    assert [a["source"] for a in second] == ["edge"] * 6
    assert {a["answered_by"] for a in second} == {"stage1:akey"}
    assert [a["label"] for a in second] == [a["label"] for a in first]  # the cloud's labels


def test_a_corrupted_segment_is_refused_and_the_old_model_keeps_serving(
        layered_bundle, digits_splits, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(layered_bundle, live)
    # A segment file that is hashed and listed, but is not this model's: only the canary
    # replay through the chain can tell.
    other = segments(layered_bundle)
    bad = repack(layered_bundle, tmp_path / "bad", {"layers/segment-0.onnx": other[1]})
    with pytest.raises(IntegrityError, match="segment"):
        load_edge_layers(load_cache_model(tmp_path / "bad").manifest)
    agent = start_edge(live, tmp_path)
    try:
        with EdgeClient(agent.info["endpoint"]) as c:
            before = c.stats()["model"]["version"]
            repack(tmp_path / "bad", live)
            agent.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: c.stats()["reloads"]["rejected"] == 1)
            reply = c.stats()
            assert reply["model"]["version"] == before != bad.version
            assert "IntegrityError" in reply["reloads"]["last_error"]
            answer = c.infer(digits_splits.test.x[0], timeout=5, policy="edge")
            assert answer["ok"] and answer["versions"]["cache"] == before
    finally:
        assert agent.stop() == 0
