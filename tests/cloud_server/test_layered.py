"""The cloud's full model served with layer caches: a real server on loopback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cachenet.protocol.client import CloudClient
from cloud_server import load_full_model
from tests.layercaches import distinct_rows, key_rule, rewrite
from tests.processes import server_atol, start_cloud


@pytest.fixture(scope="module")
def controlled(layered_bundle, digits_splits, tmp_path_factory):
    """Sixteen test inputs with a cell each, and an akey rule at the first site that knows
    the full model's answers to the first 8 of them, and nothing else."""
    from cachenet.toolchain.sites import all_features, staged

    work = tmp_path_factory.mktemp("cloud-layered")
    model, manifest = load_full_model(layered_bundle, device="cpu")
    first = manifest.data["full_model"]["layer_cache"]["sites"][0]
    feats, logits = all_features(staged(model, first["grid"]), digits_splits.test.x)
    site = first["name"]
    rows = distinct_rows(feats[0], feats[0], 10, 16)
    rule, files = key_rule(feats[0], logits[rows[:8]].argmax(1), 10, site=site, work=work,
                           name="block1-akey", rows=rows)
    bundle = rewrite(layered_bundle, work / "bundle", cloud_rules=[rule], files=files)
    return bundle, logits[rows], digits_splits.test.x[rows]


@pytest.fixture(scope="module")
def cloud(controlled, tmp_path_factory):
    daemon = start_cloud(controlled[0], tmp_path_factory.mktemp("cloud"), "--layer-cache")
    yield daemon
    assert daemon.stop() == 0


def test_a_batch_with_mixed_hits_says_who_answered_and_what_it_cost(cloud, controlled):
    _, full_logits, x = controlled
    with CloudClient(f"127.0.0.1:{cloud.info['port']}") as c:
        first = c.infer(x, timeout=10)
        again = c.infer(x, timeout=10)
    by = first.answered_by
    assert by[:8] == ["block1:akey"] * 8 and by[8:] == ["full"] * 8
    # Hits give the full model's own (stored) labels; the rest the full model's logits.
    assert first.labels[:8].tolist() == full_logits[:8].argmax(1).tolist()
    assert first.labels[8:].tolist() == first.logits[8:].argmax(1).tolist()
    np.testing.assert_allclose(first.logits[8:], full_logits[8:16], atol=server_atol())
    t = first.timings
    assert 0 < t["macs"] < t["full_macs"]
    # The rows the full model answered filled the table: now every row hits.
    assert again.answered_by == ["block1:akey"] * 16
    assert again.labels.tolist() == first.labels.tolist()
    assert again.timings["macs"] < t["macs"]


def test_without_the_flag_the_whole_model_answers(controlled, digits_splits, tmp_path):
    daemon = start_cloud(controlled[0], tmp_path)
    try:
        with CloudClient(f"127.0.0.1:{daemon.info['port']}") as c:
            answer = c.infer(digits_splits.test.x[:4], timeout=10)
        assert answer.answered_by == []
        model, _ = load_full_model(controlled[0], device="cpu")
        with torch.no_grad():
            ref = model(torch.from_numpy(digits_splits.test.x[:4])).numpy()
        np.testing.assert_allclose(answer.logits, ref, atol=server_atol())
    finally:
        assert daemon.stop() == 0
