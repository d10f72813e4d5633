"""The edge path runs where torch is not installed: a Raspberry Pi has only onnxruntime."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys

    class NoTorch:
        # Make torch (and anything under it) impossible to import, as on a Pi.
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked on the edge (import of {name})")
            return None

    sys.meta_path.insert(0, NoTorch())
    import numpy as np
    import edge_agent
    from cachenet.data.base import Normalization  # edge-safe helpers too

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
