"""Retry delays grow to their cap and are jittered, so a fleet spreads out."""

import random

import pytest

from cachenet.core.backoff import Backoff


def test_delays_grow_to_the_cap_within_the_jitter_and_reset():
    b = Backoff(0.5, 4.0, 2.0, jitter=0.2, rng=random.Random(0))
    nominal = [0.5, 1.0, 2.0, 4.0, 4.0]
    for n in nominal:
        assert n * 0.8 <= b.next() <= n * 1.2
    b.reset()
    assert 0.4 <= b.next() <= 0.6


def test_a_fleet_restarting_together_does_not_retry_in_lockstep():
    fleet = [Backoff(0.5, 5.0, rng=random.Random(i)) for i in range(100)]
    first = sorted(b.next() for b in fleet)
    assert first[-1] - first[0] > 0.1  # spread over the window, not one instant
    assert len({round(d, 6) for d in first}) == 100


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Backoff(0.0)
    with pytest.raises(ValueError):
        Backoff(1.0, jitter=1.0)
