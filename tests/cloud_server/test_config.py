"""The cloud's settings: the loader both daemons share, through ``cachenet-cloud``'s flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cachenet.exceptions import ConfigError
from cloud_server.__main__ import make_parser
from cloud_server.config import load_config


def config(argv: list[str], env: dict[str, str] | None = None):
    args = vars(make_parser().parse_args(argv))
    return load_config(file=args.pop("config"), environ=env or {}, **args)


@pytest.mark.parametrize("text", ["no", "False", "0", "off"])
def test_specialize_off_is_off(text, tmp_path):
    """Regression: CACHENET_SPECIALIZE=no and =False turned specialisation on."""
    env = {"CACHENET_SPECIALIZE": text, "CACHENET_STORE": str(tmp_path)}
    assert config(["--bundle", "b"], env).specialize is False
    assert config(["--bundle", "b"], {**env, "CACHENET_SPECIALIZE": "yes"}).specialize is True


def test_flags_override_the_environment_and_keep_their_names(tmp_path):
    env = {"CACHENET_PORT": "7000", "CACHENET_MAX_BATCH_SIZE": "8", "CACHENET_DIFFUSION":
           "a=a.pt,b=b.pt", "CACHENET_TLS_CLIENT_CERT": "false"}
    c = config(["--bundle", "b", "--port", "0", "--specialize-interval", "5", "--target",
                "0.95", "--report-interval", "3", "--grace", "1"], env)
    assert (c.port, c.max_batch_size, c.specialize_interval_s, c.specialize_target,
            c.report_interval_s, c.grace_s, c.tls_client_cert) == (0, 8, 5.0, 0.95, 3, 1.0,
                                                                   False)
    assert c.diffusion == {"a": Path("a.pt"), "b": Path("b.pt")}
    assert c.specializer().target == 0.95 and c.specializer().min_interval_s == 5.0
    toml = tmp_path / "cloud.toml"
    toml.write_text('bundle = "b"\nport = 9\nmax_queue_size = 4\n')
    c = config(["--config", str(toml)], {"CACHENET_PORT": "10"})
    assert (c.port, c.max_queue_size) == (10, 4)


@pytest.mark.parametrize("argv,env,match", [
    (["--bundle", "b"], {"CACHENET_SPECIALIZE": "maybe"}, r"^CACHENET_SPECIALIZE: must be a "),
    (["--bundle", "b", "--max-batch-size", "0"], {}, "max_batch_size must be >= 1"),
    (["--bundle", "b", "--specialize"], {}, "give --store"),
    (["--bundle", "b", "--layer-cache-refresh", "2"], {}, "layer_cache_refresh must lie"),
])
def test_bad_settings_are_refused_by_name(argv, env, match):
    with pytest.raises(ConfigError, match=match):
        config(argv, env)


def test_a_bad_port_variable_is_one_line_not_a_traceback():
    """Regression: int() ran on CACHENET_PORT while the parser was built: a traceback."""
    proc = subprocess.run([sys.executable, "-m", "cloud_server", "--bundle", "nowhere"],
                          env={"CACHENET_PORT": "fifty", "PATH": ""}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "cachenet-cloud: error: CACHENET_PORT: must be an integer, got " \
                          "'fifty'\n"
