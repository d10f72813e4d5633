"""``cachenet build`` end to end, as a user runs it: a real process, the embedded digits."""

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args, cache_dir, timeout=600):
    env = {**os.environ, "CACHENET_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, "-m", "cachenet", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_build_digits_reaches_the_figures_and_reuses_models(tmp_path, cli_cache):
    out = tmp_path / "bundle"
    proc = run_cli("build", "--dataset", "digits", "--out", str(out), "--json",
                   cache_dir=cli_cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1],
                        parse_constant=lambda c: pytest.fail(f"{c} is not strict JSON"))
    for key in ("full_accuracy", "cache_accuracy", "threshold", "hit_rate", "agreement",
                "parity_max_abs_diff", "bundle"):
        assert key in report
    # What calibration guarantees, whatever the training gave: a feasible gate's bound
    # meets the target on the calibration split; an infeasible one answers nothing.
    cal = report["calibration"]
    if cal["feasible"]:
        assert 1 - cal["agreement"] <= cal["disagreement_ucb"] <= 1 - 0.99
        assert report["threshold"] <= 1.0 and "(target 0.99: " in proc.stdout
        assert report["target_met_on_test"] == (report["agreement"] >= 0.99)
    else:
        assert report["threshold"] > 1.0 and report["hit_rate"] == 0.0
    # The figures are the bundle's own: its gate on the test split gives the hit rate.
    from cachenet.core.runtime import load_cache_model
    from cachenet.toolchain.data import load_splits

    test = load_splits("digits", seed=0).test
    assert load_cache_model(out).predict(test.x).local.mean() == pytest.approx(
        report["hit_rate"])
    assert report["parity_max_abs_diff"] <= 1e-4
    assert report["bundle"] == str(out) and (out / "manifest.json").exists()
    for label in ("full model accuracy", "cache model accuracy", "agreement at threshold",
                  "hit rate", "cache / full MACs", "bundle size", "ONNX Runtime, batch 1",
                  "full model, torch, batch 1"):
        assert label in proc.stdout
    again = run_cli("build", "--dataset", "digits", "--out", str(tmp_path / "b2"), "--json",
                    cache_dir=cli_cache)
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert (second["full_source"], second["cache_source"]) == ("cached", "cached")
    assert second["threshold"] == report["threshold"]
    assert report["full_tta"] == "none"  # digits train without flips: auto keeps one pass


@pytest.mark.slow
def test_build_with_flip_tta_reuses_the_full_model_and_the_cloud_serves_it(tmp_path, cli_cache):
    from cloud_server.model import load_full_model

    out = tmp_path / "flip"
    proc = run_cli("build", "--dataset", "digits", "--out", str(out), "--full-tta", "flip",
                   "--json", cache_dir=cli_cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["full_tta"] == "flip" and report["full_source"] in ("cached", "trained")
    assert 0 < report["full_single_pass_accuracy"] <= 1
    assert "test-time flip, 2 passes; one pass: " in proc.stdout
    model, manifest = load_full_model(out, device="cpu")
    assert model.tta == "flip" and manifest.data["full_model"]["tta"] == "flip"
    assert manifest.data["full_model"]["spec"]["kwargs"]["tta"] == "flip"


@pytest.mark.slow
def test_build_with_class_calibration_reports_and_certifies_each_class(tmp_path, cli_cache):
    from cachenet.core.runtime import load_cache_model

    out = tmp_path / "classwise"
    proc = run_cli("build", "--dataset", "digits", "--out", str(out), "--calibration",
                   "class", "--calibrate-on-test", "0.5", "--json", cache_dir=cli_cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    manifest = load_cache_model(out).manifest.data
    cal = manifest["gate"]["calibration"]
    assert cal["mode"] == "class" and report["classes"]["calibration"] == "class"
    # Half the test split calibrates, declared as such; the rest evaluates.
    dataset = manifest["dataset"]
    moved = dataset["calibration_from_test"]["n"]
    assert moved > 0 and dataset["sizes"]["test"] + moved == 359  # digits' test split
    assert cal["n"] == dataset["sizes"]["calib"]
    rows = cal["classes"]
    assert [r["class"] for r in rows] == list(range(10))
    assert sum(r["n"] for r in rows) == cal["n"]
    for r in rows:
        assert r["status"] in ("certified", "uncertified", "not certified")
        if r["status"] == "certified":
            assert r["ucb"] <= 0.01
    if cal["feasible"]:
        assert cal["disagreement_ucb"] <= 0.01
    test_rows = manifest["gate"]["test"]["classes"]
    assert sum(r["n"] for r in test_rows) == dataset["sizes"]["test"]
    assert "classes certified (class calibration)" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--dataset", "no-such-data"], "neither 'digits' nor an existing path"),
    (["--dataset", "digits", "--full", "nope"], "not a registered architecture"),
    (["--dataset", "digits", "--target", "1.5"], "expected a number in (0, 1)"),
    (["--dataset", "digits", "--cache-widths", "a,b"], "comma-separated integers"),
    (["--dataset", "digits", "--calibration", "perclass"], "invalid choice: 'perclass'"),
    (["--dataset", "digits", "--calibrate-on-test", "1"], "expected a number in (0, 1)"),
])
def test_build_bad_arguments_exit_with_a_clear_message(tmp_path, cli_cache, args, message):
    proc = run_cli("build", "--out", str(tmp_path / "b"), *args, cache_dir=cli_cache)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("version", ["..", ".", "../x", "a/b"])
def test_models_push_refuses_a_bundle_whose_version_is_a_path(digits_bundle, tmp_path,
                                                               cli_cache, version):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle[0], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
    store = tmp_path / "store"
    proc = run_cli("models", "--store", str(store), "--agent", "cam-1", "push", str(bundle),
                   cache_dir=cli_cache, timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert "is not a bundle version" in proc.stderr and "Traceback" not in proc.stderr
    listed = run_cli("models", "--store", str(store), "--agent", "cam-1", "--json", "list",
                     cache_dir=cli_cache, timeout=120)
    assert json.loads(listed.stdout) == []


@pytest.mark.slow
def test_layercache_writes_a_bundle_the_edge_loads_and_refuses_bad_arguments(
        digits_bundle, tmp_path, cli_cache):
    from cachenet.core.runtime import load_cache_model
    from cachenet.layercache.edge import load_edge_layers

    out = tmp_path / "layered"
    proc = run_cli("layercache", "--bundle", str(digits_bundle[0]), "--out", str(out),
                   "--dataset", "digits", "--where", "edge", "--kinds", "knn,learned",
                   "--target", "0.95", "--json", cache_dir=cli_cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) == {"edge", "version"} and report["edge"]["workload"] == "iid"
    model = load_cache_model(out)
    layers = load_edge_layers(model.manifest)
    assert layers is not None and model.version == report["version"]
    assert {r.cache.kind for r in layers.cascade.rules} <= {"knn", "learned"}
    bad = run_cli("layercache", "--bundle", str(digits_bundle[0]), "--out", str(out),
                  "--dataset", "digits", "--kinds", "magic", cache_dir=cli_cache, timeout=120)
    assert bad.returncode == 2 and "unknown layer-cache kinds ['magic']" in bad.stderr
