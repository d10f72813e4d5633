"""The agent's settings: the loader both daemons share; TOML as Python 3.10 reads it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cachenet.exceptions import ConfigError
from edge_agent.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text,value", [("no", False), ("off", False), ("1", True)])
def test_booleans_from_the_environment_are_strict(text, value):
    """Regression: the agent decided types by matching the annotations' text, and read
    any boolean but a few spellings of false as true."""
    env = {"CACHENET_LABEL_SHIFT": text, "CACHENET_CONTROL": text, "CACHENET_SPOOL": text}
    c = load_config(environ=env)
    assert (c.label_shift, c.control, c.spool) == (value, value, value)
    with pytest.raises(ConfigError, match=r"^CACHENET_CONTROL: must be a boolean"):
        load_config(environ={"CACHENET_CONTROL": "nein"})


def test_optional_numbers_and_choices_take_their_types():
    c = load_config(environ={"CACHENET_METRICS_PORT": "", "CACHENET_PRECISION": "int8",
                             "CACHENET_SPOOL_MAX_AGE_S": "60"})
    assert (c.metrics_port, c.precision, c.spool_max_age_s) == (None, "int8", 60.0)
    with pytest.raises(ConfigError, match=r"^CACHENET_PRECISION: must be one of fp32, int8"):
        load_config(environ={"CACHENET_PRECISION": "fp16"})
    with pytest.raises(ConfigError, match=r"^CACHENET_METRICS_PORT: must be an integer"):
        load_config(environ={"CACHENET_METRICS_PORT": "on"})


NO_TOMLLIB = textwrap.dedent("""
    import json, sys

    class NoTomllib:  # Python 3.10 has no tomllib
        def find_spec(self, name, path=None, target=None):
            if name == "tomllib":
                raise ModuleNotFoundError("No module named 'tomllib'", name="tomllib")
            return None

    sys.meta_path.insert(0, NoTomllib())
    from edge_agent.config import load_config

    c = load_config(file=sys.argv[1], environ={})
    print(json.dumps({"cloud": c.cloud, "deadline_ms": c.deadline_ms,
                      "tomllib": "tomllib" in sys.modules, "tomli": "tomli" in sys.modules}))
""")


def test_the_shipped_toml_config_loads_without_tomllib():
    """Regression: the agent imported tomllib, so on Python 3.10 every TOML config failed,
    the shipped deploy/systemd/edge.toml included."""
    proc = subprocess.run([sys.executable, "-c", NO_TOMLLIB,
                           str(ROOT / "deploy" / "systemd" / "edge.toml")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == ('{"cloud": "cloud.example:50051", "deadline_ms": 250.0, '
                                   '"tomllib": false, "tomli": true}')
