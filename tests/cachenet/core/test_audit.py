"""The online audit: an anytime-valid bound, and the rule that drops a breaking step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cachenet.core.audit import Audit, AuditConfig, confidence_sequence, log_martingale
from cachenet.exceptions import ConfigError


def test_the_interval_holds_the_rate_and_narrows_with_draws():
    lo, hi = confidence_sequence(0, 0, 0.05)
    assert (lo, hi) == (0.0, 1.0)
    widths = []
    for n in (10, 100, 1000, 10000):
        lo, hi = confidence_sequence(n // 10, n, 0.05, 1.0, 9.0)
        assert lo < 0.1 < hi
        widths.append(hi - lo)
    assert widths == sorted(widths, reverse=True)
    # The edges are where the wealth reaches 1/alpha.
    lo, hi = confidence_sequence(30, 300, 0.05, 1.0, 99.0)
    assert math.isclose(log_martingale(30, 300, hi, 1.0, 99.0), math.log(20), abs_tol=1e-6)
    assert math.isclose(log_martingale(30, 300, lo, 1.0, 99.0), math.log(20), abs_tol=1e-6)


@pytest.mark.parametrize("rate", [0.002, 0.01, 0.05])
def test_the_bound_covers_the_true_rate_at_every_moment_at_the_stated_confidence(rate):
    """Simulated streams with a known disagreement rate, watched after every draw:
    the share of seeds where the interval ever excludes the rate stays under alpha
    (a fixed-n bound checked this often would not)."""
    alpha, n, seeds = 0.1, 400, 300
    a, b = AuditConfig(target=0.99).rule.mixing
    missed = 0
    for seed in range(seeds):
        draws = np.random.default_rng(seed).random(n) < rate
        k = 0
        for i, d in enumerate(draws, start=1):
            k += int(d)
            if i % 5 and i != n:
                continue  # checked every 5 draws: the bisections are not free
            lo, hi = confidence_sequence(k, i, alpha, a, b)
            if not lo <= rate <= hi:
                missed += 1
                break
    # Binomial(300, 0.1) exceeds 45 with probability < 1%: the check is not flaky.
    assert missed <= 45, f"the interval missed the rate on {missed} of {seeds} streams"


def test_a_step_that_breaks_the_target_is_dropped_and_comes_back_after_its_cooldown():
    audit = Audit(AuditConfig(rate=1.0, target=0.99, alpha=0.05, cooldown=50, seed=0))
    dropped_at = None
    for i in range(200):  # one disagreement in five: far above 1%
        audit.tick()
        assert audit.pick()
        if audit.record("partition", agree=i % 5 != 0):
            dropped_at = i + 1
            break
    assert dropped_at is not None and dropped_at <= 60, "the reaction takes tens of audits"
    assert not audit.allowed("partition")
    assert audit.allowed("model")  # only the breaking step
    snap = audit.snapshot()
    assert snap["steps"]["partition"]["dropped"] and snap["steps"]["partition"]["drops"] == 1
    # Audits still in flight land after the drop: counted, but they do not drop it again.
    audit.pick()
    assert not audit.record("partition", agree=False)
    assert audit.snapshot()["steps"]["partition"]["drops"] == 1
    for _ in range(49):  # the clock is requests, whoever answers them
        audit.tick()
    assert not audit.allowed("partition")
    audit.tick()
    epoch = audit.epoch("partition")
    assert audit.allowed("partition")  # back, its counts restarted, in a new epoch
    assert audit.epoch("partition") == epoch + 1
    assert audit.snapshot()["steps"]["partition"]["epoch_audited"] == 0
    audit.pick()
    audit.record("partition", agree=False, epoch=epoch)  # picked before the restart
    assert audit.snapshot()["steps"]["partition"]["epoch_audited"] == 0


def test_a_drop_of_the_model_can_go_to_the_prior_instead():
    audit = Audit(AuditConfig(rate=1.0, target=0.99, cooldown=10))
    for _ in range(10):  # four disagreements in four: significant at 0.99
        audit.pick()
        if audit.record("model", agree=False):
            break
    assert not audit.allowed("model")
    audit.divert("model", "prior")
    assert audit.allowed("model") and not audit.allowed("prior")
    snap = audit.snapshot()["steps"]
    assert snap["model"]["drops"] == 0 and snap["prior"]["drops"] == 1
    assert snap["model"]["epoch_audited"] == 0


def test_a_step_within_the_target_is_kept():
    audit = Audit(AuditConfig(rate=1.0, target=0.99, alpha=0.05, seed=0))
    rng = np.random.default_rng(1)
    for _ in range(3000):
        audit.pick()
        assert not audit.record("model", agree=bool(rng.random() >= 0.002))
    snap = audit.snapshot()
    assert snap["audited"] == 3000 and snap["agreement_bound"] > 0.99


def test_the_audit_samples_its_rate_pauses_without_a_cloud_and_caps_what_waits():
    audit = Audit(AuditConfig(rate=0.1, max_inflight=1000, seed=3))
    picked = sum(audit.pick() for _ in range(5000))
    assert 400 < picked < 600
    assert not Audit(AuditConfig(rate=1.0)).pick(available=False)
    capped = Audit(AuditConfig(rate=1.0, max_inflight=2))
    assert [capped.pick() for _ in range(3)] == [True, True, False]
    capped.unanswered("cloud unreachable: CloudUnavailable")
    snap = capped.snapshot()
    assert snap["paused"].startswith("cloud unreachable") and snap["lost"] == 1
    assert snap["skipped"] == 1
    capped.record("model", agree=True)
    assert capped.snapshot()["paused"] is None


def test_after_a_change_a_burst_of_answers_is_audited_more():
    audit = Audit(AuditConfig(rate=0.02, burst_rate=0.5, burst=200, max_inflight=10**6,
                              seed=1))
    first = sum(audit.pick() for _ in range(200))  # a new agent: the burst
    steady = sum(audit.pick() for _ in range(2000))
    audit.begin_burst()  # the stream moved
    again = sum(audit.pick() for _ in range(200))
    assert 70 < first < 130 and 20 < steady < 65 and 70 < again < 130
    assert audit.snapshot()["bursts"] == 2
    off = Audit(AuditConfig(rate=0.0))  # rate 0: no audits at all, bursts included
    off.begin_burst()
    assert not any(off.pick() for _ in range(500))


@pytest.mark.parametrize("kwargs", [{"rate": 1.5}, {"burst_rate": -0.1}, {"burst": -1},
                                    {"target": 1.0}, {"alpha": 0.0}, {"cooldown": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        AuditConfig(**kwargs)
