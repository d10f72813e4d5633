import numpy as np
import pytest

from cachenet.core.calibration import (
    NEVER,
    calibrate_agreement,
    calibrate_budget,
    clopper_pearson_upper,
    evaluate,
    first_tested_n,
    fixed_sequence,
    min_testable_n,
)
from cachenet.core.strictjson import dumps
from cachenet.exceptions import CalibrationError


def test_clopper_pearson_matches_closed_forms():
    # k = 0: 1 - delta^(1/n); k = n: 1.
    assert clopper_pearson_upper(0, 300, 0.05) == pytest.approx(1 - 0.05 ** (1 / 300))
    assert clopper_pearson_upper(5, 5, 0.05) == 1.0
    assert clopper_pearson_upper(0, 0, 0.05) == 1.0
    # The bound lies above the point estimate and shrinks with n.
    assert clopper_pearson_upper(10, 1000, 0.05) > 0.01
    assert clopper_pearson_upper(10, 1000, 0.05) < clopper_pearson_upper(1, 100, 0.05)
    assert min_testable_n(0.01, 0.05) == 299
    n1 = min_testable_n(0.01, 0.05, 1)  # the smallest n that passes with one event
    assert clopper_pearson_upper(1, n1, 0.05) <= 0.01 < clopper_pearson_upper(1, n1 - 1, 0.05)
    assert n1 == 473 and min_testable_n(0.01, 0.05, 2) > n1


def test_one_disagreement_among_the_most_confident_does_not_end_the_search():
    conf = np.linspace(1, 0, 5000)
    agree = np.ones(5000, bool)
    agree[0] = False  # the surest input disagrees (a mistake of the full model's, say)
    cal = calibrate_agreement(conf, agree, score="max_softmax", target=0.99, delta=0.05)
    # Testing from the top 299 (the smallest testable count) would stop at once.
    assert clopper_pearson_upper(1, 299, 0.05) > 0.01
    assert cal.feasible and cal.hit_rate > 0.99 and cal.disagreement_ucb <= 0.01
    # With no room for a tolerated disagreement, the search starts where none is allowed.
    assert first_tested_n(5000, 0.01, 0.05) == 473
    assert first_tested_n(400, 0.01, 0.05) == 299
    small = calibrate_agreement(conf[:400], np.ones(400, bool), score="max_softmax")
    assert small.feasible and small.hit_rate == 1.0


def synthetic(n: int, seed: int):
    """Scores where disagreement gets likelier as confidence falls."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0, 1, n)
    agree = rng.uniform(0, 1, n) > 0.3 * (1 - conf) ** 2
    return conf, agree


def test_agreement_guarantee_holds_on_fresh_data():
    conf, agree = synthetic(5000, 0)
    cal = calibrate_agreement(conf, agree, score="max_softmax", target=0.99, delta=0.05)
    assert cal.feasible and 0.2 < cal.hit_rate < 1.0
    assert cal.disagreement_ucb <= 0.01
    misses = 0
    for seed in range(1, 21):
        test = evaluate(*synthetic(5000, seed), cal.threshold)
        misses += test["agreement"] < 0.99
    assert misses <= 2  # delta = 0.05 per draw, allow noise


def test_lower_target_gives_higher_hit_rate():
    conf, agree = synthetic(5000, 0)
    strict = calibrate_agreement(conf, agree, score="margin", target=0.995)
    loose = calibrate_agreement(conf, agree, score="margin", target=0.95)
    assert loose.hit_rate > strict.hit_rate


def test_infeasible_target_escalates_everything_and_says_why_in_strict_json():
    conf = np.linspace(0, 1, 100)
    cal = calibrate_agreement(conf, np.ones(100, bool), score="max_softmax", target=0.99)
    assert not cal.feasible and cal.threshold == NEVER and cal.hit_rate == 0.0
    assert evaluate(conf, np.ones(100, bool), cal.threshold)["n_accepted"] == 0
    # No accepted input, so no agreement: null in the manifest, not NaN, with the reason.
    assert cal.agreement is None and "100 calibration inputs" in cal.reason
    assert '"agreement": null' in dumps(cal.to_dict())
    assert evaluate(conf, np.ones(100, bool), NEVER)["agreement"] is None
    everything = calibrate_budget(conf, np.ones(100, bool), score="margin",
                                  escalation_budget=1.0)
    assert everything.agreement is None and "budget" in everything.reason
    dumps(everything.to_dict())


def test_the_bound_is_the_beta_quantile_without_scipy():
    beta = pytest.importorskip("scipy.stats").beta
    for n in (1, 7, 100, 473, 5000, 60_000):
        for k in sorted({0, 1, 2, n // 10, n // 2, n - 1} - set(range(n, n + 3))):
            for delta in (0.01, 0.05, 0.2):
                assert clopper_pearson_upper(k, n, delta) == pytest.approx(
                    float(beta.ppf(1 - delta, k + 1, n - k)), abs=1e-10), (k, n, delta)


def test_the_fixed_sequence_stops_at_the_first_failure_and_skips_untestable_counts():
    # (accepted, disagreements) per candidate, most conservative first.
    seq = [(100, 0), (600, 0), (800, 1), (900, 40), (1000, 1)]
    best = fixed_sequence(iter(seq), n_total=1000, target=0.99, delta=0.05)
    # (100, 0) is below the first tested count; (900, 40) fails, so (1000, 1) is never
    # reached although it would pass alone.
    assert best is not None and (best.index, best.n, best.k) == (2, 800, 1)
    assert fixed_sequence(iter([(900, 40), (1000, 0)]), n_total=1000, target=0.99,
                          delta=0.05) is None
    with pytest.raises(CalibrationError, match="target"):
        fixed_sequence([], n_total=10, target=1.0, delta=0.05)


def test_budget_mode_escalates_at_most_the_budget():
    conf, agree = synthetic(1000, 3)
    cal = calibrate_budget(conf, agree, score="entropy", escalation_budget=0.25)
    assert cal.mode == "budget" and cal.hit_rate >= 0.75
    assert evaluate(conf, agree, cal.threshold)["hit_rate"] == pytest.approx(cal.hit_rate)


@pytest.mark.parametrize("conf,agree,match", [
    (np.array([]), np.array([], bool), "empty"),
    (np.array([0.5, np.nan]), np.array([True, True]), "NaN"),
    (np.ones(3), np.ones(4, bool), "one length"),
])
def test_bad_calibration_inputs(conf, agree, match):
    with pytest.raises(CalibrationError, match=match):
        calibrate_agreement(conf, agree, score="max_softmax")
