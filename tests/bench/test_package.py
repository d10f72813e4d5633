"""The benchmarks are a package: ``python -m bench.X``, no ``sys.path`` edits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_no_benchmark_edits_sys_path_or_needs_a_shebang():
    for path in sorted((ROOT / "bench").glob("*.py")):
        source = path.read_text()
        assert "sys.path" not in source, path.name
        assert "noqa: E402" not in source, path.name
        assert not source.startswith("#!"), f"{path.name}: run it as python -m bench.X"


@pytest.mark.parametrize("module", ["bench.suite", "bench.outage"])
def test_benchmarks_run_as_modules_of_the_package(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
