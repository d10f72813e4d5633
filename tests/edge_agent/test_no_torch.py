"""The edge path runs where torch is not installed: a Raspberry Pi has only onnxruntime."""

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:
        # Make torch (and anything under it) impossible to import, as on a Pi.
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked on the edge (import of {name})")
            return None

    sys.meta_path.insert(0, NoTorch())
""")

SCRIPT = BLOCK_TORCH + textwrap.dedent("""
    import numpy as np
    import edge_agent

    model = edge_agent.load_cache_model(sys.argv[1])
    x = np.load(sys.argv[2])
    pred = model.predict(x)
    int8 = edge_agent.load_cache_model(sys.argv[1], precision="int8")
    int8.predict(x)
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not loaded, loaded
    print("labels", pred.labels.tolist(), "local", int(pred.local.sum()))
""")


def test_edge_path_never_imports_torch(digits_bundle, digits_splits, tmp_path):
    import numpy as np

    x = tmp_path / "x.npy"
    np.save(x, digits_splits.test.x[:20])
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(digits_bundle[0]), str(x)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("labels ")
    assert len(proc.stdout.split("[")[1].split("]")[0].split(",")) == 20


DAEMON = BLOCK_TORCH + textwrap.dedent("""
    from edge_agent.__main__ import main

    code = main(sys.argv[1:])
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    print("torch modules:", loaded)
    sys.exit(code)
""")


def test_edge_daemon_starts_and_serves_without_torch(digits_bundle, digits_splits, tmp_path):
    import json
    import signal
    import time

    from edge_agent.client import EdgeClient

    ready = tmp_path / "edge.ready"
    proc = subprocess.Popen([sys.executable, "-c", DAEMON, "--bundle", str(digits_bundle[0]),
                             "--bind", "tcp://127.0.0.1:0", "--cloud", "127.0.0.1:9",
                             "--deadline-ms", "100", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "edge agent not ready"
            time.sleep(0.02)
        with EdgeClient(json.loads(ready.read_text())["endpoint"]) as client:
            answers = [client.infer(x, timeout=5) for x in digits_splits.test.x[:10]]
        assert {a["source"] for a in answers} <= {"edge", "edge-fallback"}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "torch modules: []" in out
