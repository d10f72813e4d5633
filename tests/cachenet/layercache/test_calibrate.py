"""The cascade's calibration: the guarantee covers the rules together."""

from __future__ import annotations

import numpy as np

from cachenet.core.calibration import NEVER, calibrate_agreement, clopper_pearson_upper
from cachenet.layercache import calibrate_cascade
from cachenet.layercache.calibrate import evaluate_cascade


def two_rules(seed: int, n: int = 6000):
    """Rule 1 is sure of S1 (3% wrong there, at its lowest confidences); rule 2 is surer
    of S1 (never wrong there) and less sure of T (20% wrong): each passes 0.95 alone,
    together they do not."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(n, np.int64)
    s1, t = np.arange(0, n // 2), np.arange(n // 2, n // 2 + n // 10)
    conf = np.zeros((2, n))
    labels = np.full((2, n), 2, np.int64)  # wrong wherever a rule is not sure
    labels[0, s1] = labels[1, s1] = labels[1, t] = 0
    conf[0, s1] = rng.uniform(0.6, 1.0, len(s1))
    low = s1[conf[0, s1] < 0.7]
    labels[0, rng.choice(low, int(0.03 * len(s1)), replace=False)] = 1
    conf[1, s1] = rng.uniform(0.7, 1.0, len(s1))
    conf[1, t] = rng.uniform(0.6, 0.7, len(t))
    labels[1, rng.choice(t, int(0.2 * len(t)), replace=False)] = 1
    return conf, labels, ref


def test_a_cascade_of_rules_that_each_pass_alone_fails_and_joint_calibration_holds():
    conf, labels, ref = two_rules(0)
    alone = [calibrate_agreement(conf[r], labels[r] == ref, score="x", target=0.95)
             for r in range(2)]
    assert all(a.feasible for a in alone)
    first, agree = evaluate_cascade(conf, labels, ref, np.array([a.threshold for a in alone]))
    answered = first >= 0
    assert (~agree[answered]).mean() > 0.05  # each site alone passed; the cascade breaks 0.95

    joint = calibrate_cascade(list(conf), list(labels), ref, target=0.95)
    assert joint.feasible and joint.disagreement_ucb <= 0.05
    first, agree = evaluate_cascade(conf, labels, ref, np.array(joint.thresholds))
    n_acc, k = int((first >= 0).sum()), int((~agree[first >= 0]).sum())
    assert n_acc == joint.n_accepted == sum(joint.hits_per_rule)
    assert k == sum(joint.disagreements_per_rule)
    assert clopper_pearson_upper(k, n_acc, 0.05) == joint.disagreement_ucb
    # The same thresholds on a fresh draw from the same distribution keep the target.
    conf2, labels2, ref2 = two_rules(1)
    first2, agree2 = evaluate_cascade(conf2, labels2, ref2, np.array(joint.thresholds))
    assert (~agree2[first2 >= 0]).mean() <= 0.05


def test_first_hit_ends_a_request():
    conf = np.array([[0.9, 0.1, 0.9], [0.9, 0.9, 0.1]])
    first, _ = evaluate_cascade(conf, np.zeros((2, 3), np.int64), np.zeros(3, np.int64),
                                np.array([0.5, 0.5]))
    assert first.tolist() == [0, 1, 0]


def test_no_level_passes_gives_never():
    rng = np.random.default_rng(0)
    conf = rng.random((1, 500))
    labels = rng.integers(0, 2, (1, 500))
    result = calibrate_cascade(list(conf), list(labels), np.zeros(500, np.int64))
    assert not result.feasible and result.thresholds == [NEVER] and result.n_accepted == 0


def test_confidence_zero_never_answers():
    conf = np.zeros((1, 2000))
    result = calibrate_cascade(list(conf), [np.zeros(2000, np.int64)], np.zeros(2000, np.int64))
    assert result.thresholds == [NEVER]
