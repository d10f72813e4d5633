"""Calibrating the label-shift gate on streams replayed over the calibration split."""

from __future__ import annotations

import numpy as np
import pytest

from cachenet.core.cascade import Stage
from cachenet.core.gate import Gate
from cachenet.core.prior import PriorConfig
from cachenet.toolchain.adapt import calibrate_section, class_runs, replay


def test_class_runs_is_a_permutation_in_runs():
    y = np.repeat(np.arange(5), 40)
    order = class_runs(y, 20, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(200))
    changes = int((np.diff(y[order]) != 0).sum())
    assert changes < 40  # runs, not independent draws (those change ~160 times)
    assert sorted(class_runs(y, 0, np.random.default_rng(0)).tolist()) == list(range(200))


def synthetic(n=3000, k=5, seed=0):
    """A weak model: its logit for the true class is only a little higher; the full
    model is the truth."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)).astype(np.float32)
    logits[np.arange(n), y] += 1.5
    return logits, y


def test_the_calibrated_gate_holds_the_target_on_fresh_streams_and_answers_more():
    logits, y = synthetic()
    stage = Stage(Gate("max_softmax", 0.999))
    shipped = np.full(5, 0.2)
    section = calibrate_section(logits, y, y, stage, shipped, target=0.95)
    cal = section["calibration"]
    assert cal["feasible"] and section["threshold"] < 1.0
    test_logits, test_y = synthetic(seed=1)
    config = PriorConfig(**{k: section[k] for k in ("window", "strength", "min_count",
                                                    "surprise", "score", "threshold")})
    order = class_runs(test_y, 50, np.random.default_rng(2))
    scores, labels = replay(test_logits, test_y, order, stage, shipped, config)
    answered = scores >= section["threshold"]
    assert answered.mean() > 0.2  # the shipped gate alone answers almost nothing
    assert (labels[answered] == test_y[order][answered]).mean() >= 0.95 - 0.02


def test_an_infeasible_label_shift_gate_is_written_as_null_with_its_reason(bundle_copy,
                                                                          tmp_path):
    """Regression: a gate no threshold could pass wrote "agreement": NaN into the manifest,
    which strict parsers refuse and signing failed on (ValueError: Out of range float)."""
    import json

    from cachenet.core.bundle import repack
    from cachenet.core.calibration import NEVER
    from cachenet.core.signing import (
        check_signature,
        generate_keys,
        load_private_key,
        load_public_key,
        sign_bundle,
    )

    logits, y = synthetic(n=120)  # far fewer inputs than any 0.99 bound can be tested on
    section = calibrate_section(logits, y, y, Stage(Gate("max_softmax", 0.999)),
                                np.full(5, 0.2), target=0.99)
    cal = section["calibration"]
    assert section["threshold"] == NEVER and not cal["feasible"]
    assert cal["agreement"] is None and "360 calibration inputs" in cal["reason"]
    # The section goes into a bundle, which is written, read back strictly, and signed.
    section["prior"] = [0.1] * 10
    out = repack(bundle_copy, tmp_path / "b", fields={"label_shift": section})
    text = (out.root / "manifest.json").read_text()
    assert '"agreement": null' in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the manifest"))
    private, public = generate_keys(tmp_path / "keys")
    sign_bundle(out.root, load_private_key(private))
    check_signature(json.loads((out.root / "manifest.json").read_text()),
                    load_public_key(public))
