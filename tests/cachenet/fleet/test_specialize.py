"""Partition models: chosen from a histogram, made without labels, calibrated, loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cachenet.core.runtime import load_cache_model
from cachenet.fleet import partition as pt
from cachenet.fleet import specialize as sp
from cachenet.fleet.replay import ReplayData

FAST = pt.FinetuneConfig(epochs=1, min_steps=80)


def test_replay_answers_are_kept_and_reused(replay, digits_bundle, digits_splits, tmp_path):
    from cloud_server.model import load_full_model

    cache = tmp_path / "answers.npz"
    full, _ = load_full_model(digits_bundle[0], device="cpu")
    first = ReplayData.from_splits(digits_splits, full, cache=cache)
    assert cache.is_file() and np.array_equal(first.train_full, replay.train_full)
    assert np.allclose(first.train_probs.sum(1), 1.0, atol=1e-4)
    # Read back, not recomputed: there is no model to run this time.
    again = ReplayData.from_splits(digits_splits, None, cache=cache)  # type: ignore[arg-type]
    assert np.array_equal(again.hold_full, first.hold_full)
    assert np.array_equal(again.train_probs, first.train_probs)


def test_active_classes_leave_out_the_odd_mistake():
    hist = sp.normalise_histogram({1: 30, 7: 28, 9: 35, 4: 3, 2: 4}, 10)
    assert sp.active_classes(hist) == (1, 7, 9)
    flat = np.full(10, 0.1)
    chosen = sp.active_classes(flat, max_classes=4)
    assert len(chosen) == 4 and flat[list(chosen)].sum() < 0.85  # nothing small covers it
    assert sp.total_variation(hist, hist) == 0.0
    assert sp.total_variation(np.eye(10)[0], np.eye(10)[1]) == 1.0


def test_partition_targets_and_head():
    assert pt.partition_targets(np.array([0, 3, 5, 9]), (3, 9)).tolist() == [2, 0, 2, 1]
    probs = np.array([[0.1, 0.0, 0.0, 0.6, 0.0, 0.1, 0.0, 0.0, 0.0, 0.2]])
    # Soft targets: the partition's classes keep their mass, "other" gets the rest.
    assert np.allclose(pt.partition_probs(probs, (3, 9)), [[0.6, 0.2, 0.2]])
    base = torch.nn.Sequential()
    base.fc = torch.nn.Linear(4, 10)
    model = pt.partition_model(base, (3, 9))
    assert model.fc.out_features == 3
    assert torch.equal(model.fc.weight[0], base.fc.weight[3])
    assert torch.equal(model.fc.weight[1], base.fc.weight[9])


def test_heldout_draws_follow_the_histogram_without_repeats(replay):
    hist = sp.normalise_histogram({0: 1, 1: 1}, 10)
    cal = sp.heldout_like(hist, replay, 400, uniform_share=0.2, half=0, seed=1)
    ev = sp.heldout_like(hist, replay, 400, half=1, seed=1)
    assert len(set(cal.tolist())) == len(cal) and not set(cal.tolist()) & set(ev.tolist())
    assert set(replay.hold_full[ev].tolist()) <= {0, 1}
    inside = np.isin(replay.hold_full[cal], [0, 1]).mean()
    assert 0.7 < inside < 0.95  # 80% + 20% x 2/10 from the histogram


def test_partition_bundle_is_calibrated_loaded_and_answers_its_classes(digits_bundle, base,
                                                                       replay, tmp_path):
    from cachenet.core.bundle import verify_bundle
    from cachenet.toolchain.export import onnx_logits

    general = verify_bundle(digits_bundle[0])
    classes = (0, 1, 6)
    hist = sp.normalise_histogram(dict.fromkeys(classes, 1), 10)
    model = pt.train_partition(base, classes, replay, cfg=FAST)
    cal = sp.heldout_like(hist, replay, 2000, uniform_share=0.2, half=0)
    ev = sp.heldout_like(hist, replay, 2000, half=1)
    lib = sp.write_partition_bundle(tmp_path / "lib", model, general, classes,
                                    canary_x=replay.hold_x[cal][:32], exporter="torchscript")
    assert lib.gate["threshold"] > 1.0  # escalates everything until calibrated

    def scored(root, part):
        return sp.Scored(onnx_logits(root / "model.onnx", replay.hold_x[cal]),
                         onnx_logits(root / "model.onnx", replay.hold_x[ev]), part)

    cmp = sp.compare(scored(lib.root, lib.data["partition"]), scored(general.root, None),
                     scored(general.root, None), general.gate["threshold"],
                     full_calib=replay.hold_full[cal], full_eval=replay.hold_full[ev],
                     score_kind="max_softmax", target=0.95, delta=0.05)
    # Where the candidate is unsure the general model answers as it does now, so the
    # cascade answers at least what the general model alone does, whatever the training.
    assert cmp.current_hit_rate > 0 and cmp.candidate_hit_rate >= cmp.current_hit_rate
    tuned = sp.calibrated_copy(lib.root, tmp_path / "tuned", cmp)
    assert tuned.version != lib.version and tuned.gate["threshold"] == cmp.threshold
    loaded = load_cache_model(tuned.root)  # hashes and canaries checked
    assert loaded.partition == classes and loaded.covers(6) and not loaded.covers(5)
    x = replay.hold_x[ev]
    pred = loaded.predict(x)
    assert set(pred.labels.tolist()) <= set(classes)
    for i in range(20):  # the agent's per-request path reads the same answer
        label, conf = loaded.stage.read_row(loaded.logits(x[i])[0])
        assert label == pred.labels[i] and conf == pytest.approx(pred.confidence[i], abs=1e-9)


def test_class_certification_stops_where_a_class_is_shown_to_break_the_target():
    """By construction: 3,000 inputs of class 0, all answered right, and 400 of class 1,
    3% of them wrong at every score. Marginally (12 wrong of 3,400) everything may be
    answered; class by class, not while class 1 is shown above the 1% target."""
    from cachenet.core.calibration import shown_above

    conf = np.concatenate([np.linspace(0.5, 1.0, 3000), np.linspace(0.5, 1.0, 400)])
    labels = np.repeat([0, 1], [3000, 400])
    agree = np.ones(3400, bool)
    agree[np.flatnonzero(labels == 1)[::25][:12]] = False
    kw = {"score_kind": "max_softmax", "target": 0.99, "delta": 0.05}
    marginal = sp.calibrate_answerable(conf, agree, **kw)
    by_class = sp.calibrate_answerable(conf, agree, full_labels=labels, calibration="class",
                                       **kw)

    def shown(threshold: float) -> list[bool]:
        out = []
        for c in (0, 1):
            answered = (conf >= threshold) & (labels == c)
            out.append(shown_above(int((~agree[answered]).sum()), int(answered.sum()),
                                   0.01, 0.05))
        return out

    assert marginal.feasible and shown(marginal.threshold) == [False, True]
    assert by_class.feasible and by_class.threshold > marginal.threshold
    assert shown(by_class.threshold) == [False, False]
    with pytest.raises(Exception, match="calibration must be one of"):
        sp.calibrate_answerable(conf, agree, calibration="bogus", **kw)
