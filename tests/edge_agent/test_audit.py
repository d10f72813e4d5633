"""The device's cascade with its prior and its online audit, in real processes: a cloud
server, an agent, ZeroMQ and gRPC on loopback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cachenet.core.bundle import repack, verify_bundle
from cachenet.core.calibration import NEVER
from edge_agent.client import EdgeClient
from tests.processes import start_cloud, start_edge, wait_until


def variant(bundle, out, *, gate: float, label_shift: float | None = None):
    data = verify_bundle(bundle).data
    fields = {"gate": {**data["gate"], "threshold": gate}}
    if label_shift is not None:
        fields["label_shift"] = {**data["label_shift"], "threshold": label_shift,
                                 "surprise": 0.0, "min_count": 3}
    repack(bundle, out, fields=fields)
    return out


@pytest.fixture(scope="module")
def disagreeing(digits_bundle, digits_splits, tmp_path_factory):
    """Test inputs on which the cache model and the full model disagree, found by
    asking a real cloud through an agent that escalates everything."""
    tmp = tmp_path_factory.mktemp("disagreeing")
    bundle, _ = digits_bundle
    cloud = start_cloud(bundle, tmp)
    edge = start_edge(bundle, tmp, "--cloud", f"127.0.0.1:{cloud.info['port']}",
                      "--deadline-ms", "5000", "--audit-rate", "0")
    x = digits_splits.test.x
    try:
        with EdgeClient(edge.info["endpoint"]) as c:
            answers = [c.infer(x[i], policy="cloud", timeout=10) for i in range(len(x))]
    finally:
        assert edge.stop() == 0 and cloud.stop() == 0
    bad = [i for i, a in enumerate(answers) if a["edge_label"] != a["label"]]
    assert len(bad) >= 4, "the fixture needs inputs the two models disagree on"
    return x[bad]


def test_a_step_that_breaks_the_target_is_dropped_and_its_inputs_go_to_the_cloud(
        digits_bundle, disagreeing, tmp_path):
    bundle = variant(digits_bundle[0], tmp_path / "bundle", gate=0.0)  # the edge answers all
    cloud = start_cloud(bundle, tmp_path)
    edge = start_edge(bundle, tmp_path, "--cloud", f"127.0.0.1:{cloud.info['port']}",
                      "--deadline-ms", "5000", "--audit-rate", "1.0")
    try:
        with EdgeClient(edge.info["endpoint"]) as c:
            # Every audit disagrees. One request at a time, each audit back before the
            # next: the prior is dropped first (the adapted part), then the model's gate.
            first = []
            for i in range(16):
                first.append(c.infer(disagreeing[i % len(disagreeing)], timeout=10))
                wait_until(lambda i=i: c.stats()["audit"]["audited"] == i + 1, timeout=20)
                if c.stats()["audit"]["steps"].get("model", {}).get("dropped"):
                    break
            after = [c.infer(disagreeing[i], timeout=10) for i in range(len(disagreeing))]
            stats = c.stats()
    finally:
        assert edge.stop() == 0 and cloud.stop() == 0
    assert {a["source"] for a in first} == {"edge"}
    assert {a["source"] for a in after} == {"cloud"}  # dropped: everything escalates
    audit = stats["audit"]
    assert audit["steps"]["model"]["drops"] == 1 and audit["steps"]["prior"]["drops"] == 1
    assert audit["target"] == 0.99  # the digits gate has a budget: the default target
    assert audit["disagreed"] == len(first) == 8  # four to drop the prior, four the model
    assert audit["agreement_bound"] < 0.99
    assert stats["stats"]["edge_steps"]["model"] == 8
    json.dumps(stats, allow_nan=False)  # strict JSON


def test_every_answer_arrives_when_the_cloud_is_down_and_the_audit_says_it_paused(
        digits_bundle, digits_splits, tmp_path):
    bundle = variant(digits_bundle[0], tmp_path / "bundle", gate=0.0)
    cloud = start_cloud(bundle, tmp_path)
    port = cloud.info["port"]
    assert cloud.stop() == 0  # an address where nothing listens any more
    edge = start_edge(bundle, tmp_path, "--cloud", f"127.0.0.1:{port}", "--deadline-ms",
                      "300", "--audit-rate", "1.0")
    x = digits_splits.test.x[:20]
    try:
        with EdgeClient(edge.info["endpoint"]) as c:
            answers = [c.infer(x[i], timeout=10) for i in range(len(x))]
            wait_until(lambda: c.stats()["audit"]["lost"] > 0, timeout=20)
            stats = c.stats()
    finally:
        assert edge.stop() == 0
    assert all(a["ok"] and a["source"] == "edge" for a in answers)
    assert stats["audit"]["paused"].startswith("cloud unreachable")
    assert stats["audit"]["audited"] == 0


def test_the_stream_prior_answers_on_the_device_once_it_has_seen_the_stream(
        digits_bundle, digits_splits, tmp_path):
    """A gate that never trusts the model alone, and a label-shift gate that trusts it
    once the prior is in use: the first answers come from the cloud, the next from the
    prior, with the model's own label."""
    bundle = variant(digits_bundle[0], tmp_path / "bundle", gate=NEVER, label_shift=0.0)
    cloud = start_cloud(bundle, tmp_path)
    edge = start_edge(bundle, tmp_path, "--cloud", f"127.0.0.1:{cloud.info['port']}",
                      "--deadline-ms", "5000", "--audit-rate", "0")
    y = digits_splits.test.y
    x = digits_splits.test.x[np.flatnonzero(y == y[0])[:12]]
    try:
        with EdgeClient(edge.info["endpoint"]) as c:
            answers = [c.infer(x[i], timeout=10) for i in range(len(x))]
            stats = c.stats()
    finally:
        assert edge.stop() == 0 and cloud.stop() == 0
    assert [a["source"] for a in answers[:3]] == ["cloud"] * 3  # min_count 3
    later = [a for a in answers[3:] if a["source"] == "edge"]
    assert later and all(a["answered_by"] == "prior" for a in later)
    assert stats["prior"]["in_use"] and stats["stats"]["edge_steps"]["prior"] == len(later)


def sources_one_at_a_time(edge, x, n: int) -> tuple[list[str], dict]:
    """Who answered ``x``, sent ``n`` times, each audit back before the next; then stats."""
    try:
        with EdgeClient(edge.info["endpoint"]) as c:
            sources = []
            for _ in range(n):
                sources.append(c.infer(x, timeout=10)["source"])
                wait_until(lambda: c.stats()["audit"]["inflight"] == 0, timeout=20)
            return sources, c.stats()
    finally:
        assert edge.stop() == 0


def test_a_class_the_audit_finds_disagreeing_tightens_its_own_threshold(
        digits_bundle, disagreeing, tmp_path):
    """Rolling risk control per class, in real processes: every answer is audited
    (probability 1, weight 1), the gain is 1, so one disagreement lifts the threshold of
    the edge's label by 0.99 over the calibrated 0, and a second above 1: from then on
    that label escalates, while the audit (two disagreements are too few for its
    anytime-valid bound) keeps the step. Without the control, the edge keeps answering."""
    bundle = variant(digits_bundle[0], tmp_path / "bundle", gate=0.0)  # the edge answers all
    cloud = start_cloud(bundle, tmp_path)
    x = disagreeing[0]
    common = ("--cloud", f"127.0.0.1:{cloud.info['port']}", "--deadline-ms", "5000",
              "--audit-rate", "1.0", "--no-label-shift", "--no-layer-cache")
    try:
        sources, stats = sources_one_at_a_time(
            start_edge(bundle, tmp_path, *common, "--class-control-gain", "1.0"), x, 4)
        assert sources[0] == "edge" and sources[-1] == "cloud"
        assert sources.count("edge") <= 2  # one disagreement, or two, then escalations
        (row,) = stats["class_thresholds"]["classes"].values()  # the one label it gave
        assert row["disagreed"] == row["audited"] == sources.count("edge")
        assert row["threshold"] == pytest.approx(0.99 * row["disagreed"])
        assert not stats["audit"]["steps"]["model"]["dropped"]

        (tmp_path / "fixed").mkdir()
        plain, _ = sources_one_at_a_time(
            start_edge(bundle, tmp_path / "fixed", *common, "--no-class-control"), x, 3)
        assert plain == ["edge"] * 3
    finally:
        assert cloud.stop() == 0
