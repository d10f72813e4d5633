"""Every result file records where it came from: the commit, the machine, the command."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import provenance
from cachenet.exceptions import NonFiniteError

ROOT = Path(__file__).resolve().parents[2]


def test_a_result_records_its_commit_machine_and_command(tmp_path):
    stamp = provenance.provenance("bench.example", ["--bundle", "b dir", "--quick"])
    out = tmp_path / "deeper" / "result.json"
    provenance.write(out, {"rows": [{"mean_ms": 1.5, "agreement": None}]}, stamp)
    data = json.loads(out.read_text())  # strict JSON, read back as written
    p = data["provenance"]
    assert p["command"] == "python -m bench.example --bundle 'b dir' --quick"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:  # a checkout: the commit, and whether the tree was dirty
        assert p["commit"] == head.stdout.strip() and isinstance(p["dirty"], bool)
    else:  # an exported tree has no commit to record, and says so
        assert p["commit"] is None and p["dirty"] is None
    m = p["machine"]
    assert m["cpus"] >= 1 and m["python"] == ".".join(map(str, sys.version_info[:3]))
    assert m["platform"] and "gpu" in m and "cpu" in m
    assert m["numpy"]  # imported here; a library not imported is not claimed
    assert data["rows"] == [{"mean_ms": 1.5, "agreement": None}]
    assert provenance.command_of(data) == p["command"]
    assert provenance.machine_of(data) == m


def test_a_figure_that_is_not_finite_is_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "result.json"
    with pytest.raises(NonFiniteError, match=r"'rows\[0\]\.agreement'"):
        provenance.write(out, {"rows": [{"agreement": math.nan}]},
                         provenance.provenance("bench.example", []))
    assert not out.exists()


def test_results_written_before_provenance_still_read():
    old = {"command": "python bench/suite.py --quick", "machine": {"cpus": 2}}
    assert provenance.command_of(old) == "python bench/suite.py --quick"
    assert provenance.machine_of(old) == {"cpus": 2}
    assert provenance.command_of({}) == "?" and provenance.machine_of({}) == {}
