"""The agent's model set: the general model, k partition models (LRU), local switching."""

from __future__ import annotations

import pytest

from cachenet.core.bundle import verify_bundle
from cachenet.core.runtime import load_cache_model
from cachenet.fleet import specialize as sp
from cachenet.fleet.partition import partition_model
from cachenet.toolchain.models import load_checkpoint
from edge_agent.partitions import ModelSet


@pytest.fixture(scope="module")
def models(digits_bundle, digits_splits, tmp_path_factory):
    """The general model and three partition models, loaded as the agent loads them."""
    root = tmp_path_factory.mktemp("partitions")
    base, _, _ = load_checkpoint(digits_bundle[0] / "full" / "cache.pt")
    general = verify_bundle(digits_bundle[0])
    out = {"general": load_cache_model(digits_bundle[0])}
    for classes in ((0, 1, 2), (3, 4, 5), (6, 7, 8)):
        # Untrained heads are enough here: these tests are about choosing, not answering.
        m = sp.write_partition_bundle(root / str(classes), partition_model(base, classes),
                                      general, classes, canary_x=digits_splits.test.x[:16],
                                      exporter="torchscript")
        out[classes] = load_cache_model(m.root)
    return out


def test_holds_k_partitions_least_recently_used_out(models):
    s = ModelSet(models["general"], k=2, window=4)
    for classes in ((0, 1, 2), (3, 4, 5), (6, 7, 8)):
        assert s.add(models[classes]) is models[classes]
    assert s.active is models[(6, 7, 8)]
    held = sorted(tuple(c) for c in s.snapshot()["partitions"].values())
    assert held == [(3, 4, 5), (6, 7, 8)]  # (0, 1, 2), used longest ago, was dropped


def test_switches_when_the_cloud_answers_show_the_stream_moved(models):
    s = ModelSet(models["general"], k=3, window=4)
    s.add(models[(0, 1, 2)])
    s.add(models[(3, 4, 5)])
    # The stream is on 3-5: cloud answers there keep the active model.
    assert all(s.observe(label, hit=False) is None for label in (3, 4, 5, 4))
    # It moves to 0-2, which a held model covers: switch to it, locally.
    switched = [s.observe(label, hit=False) for label in (0, 1, 2, 1)]
    assert switched.count(models[(0, 1, 2)]) == 1 and s.active is models[(0, 1, 2)]
    # Then to 9, which none covers: back to the general model.
    switched = [s.observe(9, hit=False) for _ in range(4)]
    assert switched.count(models["general"]) == 1 and s.active is models["general"]
    assert s.switches == 2
    # A general model that is pushed replaces the general one.
    s.add(models["general"])
    assert s.general is models["general"] and s.active is models["general"]


def test_a_partition_whose_audit_breaks_is_retired_and_the_cloud_is_told(models):
    """Every audited answer of the partition model disagrees: its bound breaks, the
    model set stops holding it, the general model answers, and the control plane has
    the retirement to report (and refuses the version if it is pushed again)."""
    from cachenet.core.audit import Audit, AuditConfig
    from edge_agent.engine import Decision, Engine

    s = ModelSet(models["general"], k=3)
    part = models[(3, 4, 5)]
    s.add(part)
    engine = Engine(s, Audit(AuditConfig(rate=1.0, target=0.99)), class_control=None)
    answer = {"label": 3, "versions": {"cache": part.version}}
    for _ in range(200):
        if part.version in engine.retired_versions:
            break
        decision = Decision(dict(answer), "partition", audit=True,
                            epoch=engine.audit.epoch("partition"), audit_p=1.0)
        engine.audited(decision, cloud_label=4, reason=None)
    assert part.version in engine.retired_versions
    assert s.active is s.general and part.version not in s.partitions
    version, reason = engine.retired[0]
    assert version == part.version and "audit" in reason
    assert engine.report_soon.is_set()
    assert part.version in engine.snapshot()["retired"]
    assert not s.retire(part.version)  # once
