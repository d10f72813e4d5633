import numpy as np
import pytest

from cachenet.core.gate import SCORES, Gate, score, softmax
from cachenet.exceptions import ConfigError


def test_scores_rank_a_sure_row_above_an_unsure_one():
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 0.9, 0.8]])
    for kind in SCORES:
        s = score(logits, kind)
        assert s.shape == (2,) and np.all((s >= 0) & (s <= 1))
        assert s[0] > s[1], kind


def test_score_values():
    uniform = np.zeros((1, 4))
    assert score(uniform, "max_softmax")[0] == pytest.approx(0.25)
    assert score(uniform, "margin")[0] == pytest.approx(0.0)
    assert score(uniform, "entropy")[0] == pytest.approx(0.0, abs=1e-9)
    assert softmax(np.array([[1000.0, 0.0]]))[0, 0] == pytest.approx(1.0)  # no overflow


def test_gate_decides_by_threshold():
    gate = Gate("max_softmax", 0.9)
    labels, _conf, local = gate.decide(np.array([[5.0, 0.0], [0.1, 0.0]]))
    assert labels.tolist() == [0, 0] and local.tolist() == [True, False]
    with pytest.raises(ConfigError, match="unknown gate score"):
        Gate("vibes", 0.5)


@pytest.mark.parametrize("kind", list(SCORES))
def test_single_row_fast_path_equals_the_batch_path(kind):
    rng = np.random.default_rng(0)
    logits = np.vstack([rng.normal(0, 3, (50, 10)), np.zeros((1, 10)), [[30.0] + [0.0] * 9],
                        rng.normal(0, 1, (5, 2))[:, :2].repeat(5, axis=1)]).astype(np.float32)
    gate = Gate(kind, 0.5)
    batch = gate.confidence(logits)
    rows = [gate.confidence_row(r) for r in logits]
    np.testing.assert_allclose(rows, batch, rtol=1e-9, atol=1e-9)
