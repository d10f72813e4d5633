"""Each kind's hit rule, bounded memory, and its arrays round trip."""

from __future__ import annotations

import numpy as np
import pytest

from cachenet.exceptions import ManifestError
from cachenet.layercache import (
    KINDS,
    HeadCache,
    HeadConfig,
    KeyCache,
    KeyConfig,
    KnnCache,
    KnnConfig,
)


def feats(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_registry_names_every_kind():
    assert set(KINDS) == {"knn", "akey", "learned"}


def test_knn_hits_a_stored_key_and_not_a_split_vote():
    f = feats(200)
    cache = KnnCache.fit(KnnConfig(dim=8, k=3, capacity=512), f)
    cache.fill(np.repeat(f[:2], 3, axis=0), np.array([4, 4, 4, 7, 7, 7]))
    found = cache.lookup(f[:2])
    assert found.labels.tolist() == [4, 7]
    assert np.allclose(found.conf, 1.0, atol=1e-3)  # distance 0 to all three
    split = KnnCache.fit(KnnConfig(dim=8, k=3, capacity=512), f)
    split.fill(np.repeat(f[:1], 3, axis=0), np.array([4, 4, 5]))  # its neighbours disagree
    assert split.lookup(f[:1]).conf[0] == 0.0
    far = cache.lookup(f[100:101] * 50)
    assert far.conf[0] < 0.2  # unanimous, but far: low confidence


def test_knn_memory_is_bounded_and_least_recently_used_goes_first():
    f = feats(40)
    cache = KnnCache.fit(KnnConfig(dim=4, k=1, capacity=8), f)
    cache.fill(f[:8], np.arange(8))
    cache.lookup(f[:1])  # entry 0 is used: it survives the next fill
    cache.fill(f[8:15], np.full(7, 9))
    assert cache.size == 8 and cache.keys.shape == (8, 4)
    assert cache.lookup(f[:1]).labels[0] == 0
    assert cache.lookup(f[3:4]).labels[0] == 9  # evicted: its nearest is a new entry or none


def test_akey_counts_answers_under_a_coarse_key():
    f = feats(100)
    cache = KeyCache.fit(KeyConfig(num_classes=10, dim=4, step=0.5), f)
    assert cache.lookup(f[:1]).conf[0] == 0.0  # empty
    cache.fill(f[:1], np.array([3]))
    one = cache.lookup(f[:1] + 1e-4)  # the same cell
    assert one.labels[0] == 3 and one.conf[0] == pytest.approx(0.5)
    cache.fill(f[:1], np.array([3]))
    assert cache.lookup(f[:1]).conf[0] == pytest.approx(2 / 3)
    cache.fill(f[:1], np.array([6]))  # mixed cell: no more hits
    assert cache.lookup(f[:1]).conf[0] == 0.0


def test_akey_memory_is_bounded():
    f = feats(300, seed=1)
    cache = KeyCache.fit(KeyConfig(num_classes=3, dim=8, step=0.05, capacity=16), f)
    cache.fill(f, np.zeros(300, np.int64))
    assert len(cache.table) == 16
    assert cache.lookup(f[-1:]).conf[0] > 0 and cache.lookup(f[:1]).conf[0] == 0


def test_head_answers_its_logits_with_a_gate_score():
    w = np.zeros((16, 3), np.float32)
    w[0, 2] = 10.0
    head = HeadCache(HeadConfig(), [(w, np.zeros(3, np.float32))])
    x = np.zeros((2, 16), np.float32)
    x[0, 0] = 1.0
    found = head.lookup(x)
    assert found.labels[0] == 2 and found.conf[0] > 0.99
    assert found.conf[1] == pytest.approx(1 / 3)
    assert head.lookup_macs == 48


@pytest.mark.parametrize("kind", ["knn", "akey", "learned"])
def test_arrays_round_trip(kind):
    f = feats(64)
    if kind == "knn":
        cache = KnnCache.fit(KnnConfig(dim=8, capacity=32), f)
    elif kind == "akey":
        cache = KeyCache.fit(KeyConfig(num_classes=4, dim=4), f)
    else:
        rng = np.random.default_rng(0)
        cache = HeadCache(HeadConfig(hidden=5), [(rng.standard_normal((16, 5)), np.zeros(5)),
                                                 (rng.standard_normal((5, 4)), np.zeros(4))])
    cache.fill(f[:20], np.arange(20) % 4)
    again = KINDS[kind].from_arrays(cache.config, cache.arrays())
    a, b = cache.lookup(f), again.lookup(f)
    assert np.array_equal(a.labels, b.labels) and np.allclose(a.conf, b.conf)


def test_bad_arrays_are_refused_with_the_reason():
    f = feats(32)
    good = KnnCache.fit(KnnConfig(dim=8), f).arrays()
    with pytest.raises(ManifestError, match="matrix"):
        KnnCache.from_arrays(KnnConfig(dim=8), {k: v for k, v in good.items() if k != "matrix"})
    with pytest.raises(ManifestError, match="NaN"):
        KnnCache.from_arrays(KnnConfig(dim=8), {**good, "mean": np.full(16, np.nan)})
    with pytest.raises(ManifestError, match="dim"):
        KnnCache.from_arrays(KnnConfig(dim=4), good)
    with pytest.raises(ManifestError, match="chain"):
        HeadCache.from_arrays(HeadConfig(hidden=5), {"w0": np.ones((16, 5)), "b0": np.ones(5),
                                                     "w1": np.ones((6, 4)), "b1": np.ones(4)})
    with pytest.raises(ManifestError, match="range"):
        KnnConfig(capacity=0)
