"""Per-class thresholds that follow the stream (rolling risk control on the audit)."""

import numpy as np
import pytest

from cachenet.core.rolling import ClassThresholds, RollingConfig
from cachenet.exceptions import ConfigError

EPS = 0.01


def run(stream_seed: int, *, n: int, adversarial: bool, gain: float = 0.002,
        rate: float = 0.05):
    """A stream of runs over three classes: class 0 the model reads well, class 1 it
    confuses at every score (4% disagreement), class 2 a stream that, when
    ``adversarial``, disagrees exactly where the current threshold is (inputs just
    above it). Returns the control, per class the real answers and disagreements
    (audited or not), and the largest weighted excess seen at any moment."""
    rng = np.random.default_rng(stream_seed)
    control = ClassThresholds(0.9, 1 - EPS, RollingConfig(gain=gain, slack=0.1))
    answers, wrong = np.zeros(3), np.zeros(3)
    excess, worst = np.zeros(3), np.zeros(3)
    label = 0
    for _ in range(n):
        if rng.random() < 0.02:
            label = int(rng.integers(3))
        conf = float(rng.uniform(0.7, 1.0))
        theta = control.threshold(label)
        if conf < theta:
            continue  # escalated: no answer, no audit, no update
        if label == 0:
            disagree = rng.random() < 0.2 * (1 - conf) ** 2
        elif label == 1:
            disagree = rng.random() < 0.04
        else:
            disagree = (adversarial and conf < theta + 0.02) or rng.random() < 0.002
        answers[label] += 1
        wrong[label] += disagree
        if rng.random() < rate:
            w = 1 / rate
            excess[label] += w * (disagree - EPS)
            worst[label] = max(worst[label], excess[label])
            control.update(label, bool(disagree), rate)
    return control, answers, wrong, worst


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("adversarial", [False, True])
def test_the_weighted_excess_is_bounded_at_every_moment_on_any_stream(seed, adversarial):
    gain, rate = 0.002, 0.05
    control, answers, wrong, worst = run(seed, n=60_000, adversarial=adversarial,
                                         gain=gain, rate=rate)
    ceiling = 1.0 + gain / rate  # one audit in flight at a time here
    bound = (ceiling - control.floor) / gain
    assert (worst <= bound + 1e-9).all()
    # Each class's real disagreement among all its answers tends to the target: within
    # the guarantee's slack for its answers, and the audit's sampling noise.
    for c in range(3):
        if answers[c] > 2000:
            rate_c = wrong[c] / answers[c]
            noise = 4 * np.sqrt(EPS / rate / answers[c])
            assert rate_c <= EPS + bound / answers[c] + noise, (c, rate_c)


def test_an_easy_class_gains_coverage_and_a_confused_one_tightens():
    control, answers, wrong, _ = run(0, n=60_000, adversarial=False)
    assert control.threshold(0) < 0.9  # below the calibrated threshold: more answers
    assert control.threshold(0) >= control.floor == pytest.approx(0.8)
    assert control.threshold(1) > 0.95  # 4% at every score: it answers little, or nothing
    assert wrong[1] / max(answers[1], 1) < 0.04
    snap = control.snapshot()
    assert set(snap["classes"]) == {"0", "1", "2"} and snap["base"] == 0.9
    assert snap["classes"]["1"]["disagreed"] > 0


def test_each_update_moves_by_the_weighted_loss():
    control = ClassThresholds(0.5, 0.99, RollingConfig(gain=0.1, slack=0.5))
    assert control.threshold(7) == 0.5  # untouched classes keep the calibrated one
    assert control.update(7, True, 0.5) == pytest.approx(0.5 + 0.1 * 2 * 0.99)
    assert control.update(7, False, 1.0) == pytest.approx(0.5 + 0.198 - 0.001)
    assert control.threshold(3) == 0.5
    for _ in range(10_000):
        control.update(3, False, 1.0)
    assert control.threshold(3) == control.floor == 0.0  # clipped at the floor


@pytest.mark.parametrize("kwargs", [{"gain": 0.0}, {"gain": 2.0}, {"slack": -0.1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ConfigError, match="per-class control"):
        RollingConfig(**kwargs)


def test_an_audit_probability_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="probability"):
        ClassThresholds(0.5, 0.99).update(0, True, 0.0)
