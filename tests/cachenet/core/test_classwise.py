"""Class-conditional calibration: every class of the full model's answer held to the
target where the data can show it, each certified class with its own bound."""

import numpy as np
import pytest

from cachenet.core.calibration import (
    calibrate_agreement,
    calibrate_classwise,
    class_counts,
    class_report,
    clopper_pearson_upper,
    shown_above,
)
from cachenet.core.strictjson import dumps
from cachenet.exceptions import CalibrationError


def stream(per_class: int, classes: int, seed: int, bad: int | None = None,
           bad_rate: float = 0.3):
    """Scores spread evenly; a disagreement rate that falls with the score, faster for
    every class but ``bad``, whose rate is ``bad_rate`` times one minus the score."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(classes), per_class)
    conf = rng.uniform(0, 1, len(groups))
    p = 0.2 * (1 - conf) ** 3
    if bad is not None:
        p[groups == bad] = bad_rate * (1 - conf[groups == bad])
    return conf, rng.uniform(0, 1, len(groups)) >= p, groups


def clopper_pearson_lower(k: int, n: int, delta: float) -> float:
    """The one-sided lower bound, as one minus the upper bound on the other outcome."""
    return 0.0 if k <= 0 else 1.0 - clopper_pearson_upper(n - k, n, delta)


def test_running_counts_match_a_direct_count():
    conf, agree, groups = stream(50, 4, 0)
    cuts = [0, 1, 37, 37, 200]
    accepted, dis = class_counts(conf, agree, groups, 4, cuts)
    assert accepted.shape == dis.shape == (5, 4) and accepted[-1].tolist() == [50] * 4
    for row, m in enumerate(cuts):
        top = np.argsort(-conf, kind="stable")[:m]
        for c in range(4):
            mine = top[groups[top] == c]
            assert accepted[row, c] == len(mine)
            assert dis[row, c] == int((~agree[mine]).sum())


def test_shown_above_is_the_lower_bounds_test():
    assert clopper_pearson_lower(0, 100, 0.05) == 0.0
    assert clopper_pearson_lower(100, 100, 0.05) == pytest.approx(0.05 ** (1 / 100))
    lo, hi = clopper_pearson_lower(30, 400, 0.05), clopper_pearson_upper(30, 400, 0.05)
    assert lo < 30 / 400 < hi
    # shown_above is the lower bound's test, computed directly.
    for k, n in [(0, 10), (1, 39), (2, 39), (5, 100), (30, 400), (13, 300), (400, 400)]:
        for rate in (0.01, 0.05, 0.1):
            assert shown_above(k, n, rate, 0.05) == (clopper_pearson_lower(k, n, 0.05) > rate)


def test_a_class_shown_above_the_target_stops_the_threshold_the_marginal_one_passes():
    conf, agree, groups = stream(1000, 10, 1, bad=3)
    marginal = calibrate_agreement(conf, agree, score="max_softmax")
    per_class = calibrate_classwise(conf, agree, groups, 10, score="max_softmax")
    assert marginal.feasible and per_class.feasible and per_class.mode == "class"
    # At the marginal threshold the bad class is plainly above 1 - target.
    at_marginal = class_report(conf, agree, groups, 10, marginal.threshold, target=0.99,
                               delta=0.05)
    bad = at_marginal[3]
    assert clopper_pearson_lower(bad["disagreements"], bad["n_accepted"], 0.05) > 0.01
    # The class calibration stops before the data show that: a stricter threshold.
    assert per_class.threshold > marginal.threshold
    row = per_class.classes[3]
    assert clopper_pearson_lower(row["disagreements"], row["n_accepted"], 0.05) <= 0.01
    assert per_class.disagreement_ucb <= 0.01
    dumps(per_class.to_dict())  # strict JSON: no NaN anywhere in the report


def test_classes_with_enough_clean_answers_are_certified_and_the_rest_say_so():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(3), [3000, 3000, 100])
    conf = rng.uniform(0.5, 1.0, len(groups))
    agree = np.ones(len(groups), bool)
    cal = calibrate_classwise(conf, agree, groups, 3, score="max_softmax")
    assert cal.feasible and cal.hit_rate == 1.0
    status = [row["status"] for row in cal.classes]
    # 3000 clean answers pass a bound at delta / 6; 100 cannot, whatever they show.
    assert status == ["certified", "certified", "uncertified"]
    for row in cal.classes[:2]:
        assert row["ucb"] <= 0.01 and row["n_accepted"] == 3000


def test_a_class_whose_bound_fails_is_not_certified_but_still_answered():
    groups = np.repeat(np.arange(2), 3000)
    conf = np.tile(np.linspace(1, 0.5, 3000), 2)
    agree = np.ones(6000, bool)
    agree[3000 + np.arange(150, 3000, 200)] = False  # class 1: 15 in 3000, 0.5%
    cal = calibrate_classwise(conf, agree, groups, 2, score="max_softmax")
    assert cal.feasible and cal.hit_rate == 1.0
    assert [row["status"] for row in cal.classes] == ["certified", "not certified"]
    assert cal.classes[1]["agreement"] == pytest.approx(1 - 15 / 3000)


def test_when_nothing_passes_everything_escalates_with_a_report_per_class():
    groups = np.repeat(np.arange(2), 200)
    conf = np.linspace(1, 0, 400)
    cal = calibrate_classwise(conf, np.zeros(400, bool), groups, 2, score="max_softmax")
    assert not cal.feasible and cal.hit_rate == 0.0 and "everything escalates" in cal.reason
    assert [row["n_accepted"] for row in cal.classes] == [0, 0]
    dumps(cal.to_dict())


def test_a_class_above_the_target_is_never_certified_and_a_clean_one_is():
    """By construction: class 0 disagrees 0.1% of the time wherever it is answered, class
    1 1.5% (above the 1% the target allows, but not by enough to stop the search; its
    scores stay under 0.8, so that the most confident inputs pass the marginal test),
    the rest less as the score rises. Over many calibrations class 1 is never
    certified (its bound holds), and class 0 is."""
    certified = {0: 0, 1: 0}
    for seed in range(8):
        rng = np.random.default_rng(seed)
        groups = np.repeat(np.arange(4), 3000)
        conf = rng.uniform(0, 1, len(groups)) * np.where(groups == 1, 0.8, 1.0)
        p = np.select([groups == 0, groups == 1], [0.001, 0.015], 0.1 * (1 - conf) ** 3)
        agree = rng.uniform(0, 1, len(groups)) >= p
        cal = calibrate_classwise(conf, agree, groups, 4, score="max_softmax")
        assert cal.feasible
        for c in certified:
            certified[c] += cal.classes[c]["status"] == "certified"
    assert certified[1] == 0 and certified[0] >= 2


@pytest.mark.parametrize("groups, match", [
    (np.array([0, 1, 2]), "one per score"),
    (np.array([0, 5]), "in \\[0, 3\\)"),
])
def test_bad_classes_are_refused(groups, match):
    with pytest.raises(CalibrationError, match=match):
        calibrate_classwise(np.array([0.5, 0.6]), np.array([True, True]), groups, 3,
                            score="max_softmax")
