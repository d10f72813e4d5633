"""The one settings loader: types read strictly from every layer, layers in order, and each
error one line naming the setting as its layer spells it."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from cachenet.core import settings
from cachenet.core.settings import setting
from cachenet.exceptions import ConfigError


@dataclass
class Example:
    name: str = setting("x", "a name")
    port: int = setting(80, "a port")
    rate: float = setting(0.5, "a rate")
    on: bool = setting(True, "on by default")
    extra: bool = setting(False, "off by default")
    path: Path | None = setting(None, "a path")
    limit: int | None = setting(None, "an optional number")
    mode: Literal["a", "b"] = setting("a", "a choice")
    models: dict[str, Path] = setting(help="named paths", default_factory=dict)
    renamed: float = setting(1.0, "its flag is not its name", flag="--other")


def load(**kw):
    return settings.load(Example, **{"environ": {}, **kw})


@pytest.mark.parametrize("text,value", [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("false", False), ("No", False), ("off", False)])
def test_booleans_read_strictly(text, value):
    assert load(environ={"CACHENET_ON": text}).on is value
    assert load(flags={"extra": text}).extra is value


@pytest.mark.parametrize("text", ["maybe", "", "2", "nope", "Falsey"])
def test_anything_else_is_not_a_boolean(text):
    with pytest.raises(ConfigError, match=r"^CACHENET_ON: must be a boolean"):
        load(environ={"CACHENET_ON": text})


@pytest.mark.parametrize("env,match", [
    ({"CACHENET_PORT": "abc"}, "^CACHENET_PORT: must be an integer, got 'abc'$"),
    ({"CACHENET_PORT": "8.5"}, "^CACHENET_PORT: must be an integer"),
    ({"CACHENET_RATE": "nan"}, "^CACHENET_RATE: must be a finite number"),
    ({"CACHENET_RATE": "inf"}, "^CACHENET_RATE: must be a finite number"),
    ({"CACHENET_MODE": "c"}, "^CACHENET_MODE: must be one of a, b, got 'c'$"),
    ({"CACHENET_MODELS": "x"}, "^CACHENET_MODELS: expected NAME=PATH"),
    ({"CACHENET_MODELS": "a=1,a=2"}, "names 'a' twice"),
])
def test_each_error_is_one_line_naming_the_variable(env, match):
    with pytest.raises(ConfigError, match=match) as err:
        load(environ=env)
    assert "\n" not in str(err.value)


def test_values_take_their_types_and_empty_optionals_are_unset():
    c = load(environ={"CACHENET_PORT": " 8080 ", "CACHENET_RATE": "1e-3", "CACHENET_PATH": "a/b",
                      "CACHENET_LIMIT": "", "CACHENET_MODELS": "one=a.pt,two=b.pt"})
    assert (c.port, c.rate, c.path, c.limit) == (8080, 0.001, Path("a/b"), None)
    assert c.models == {"one": Path("a.pt"), "two": Path("b.pt")}
    assert load(flags={"models": ["x=1.pt"]}).models == {"x": Path("1.pt")}


def test_file_then_environment_then_flags(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('port = 1\nrate = 0.25\nname = "file"\non = false\n')
    c = load(file=f, environ={"CACHENET_PORT": "2", "CACHENET_NAME": "env"},
             flags={"port": "3", "rate": None})
    assert (c.port, c.rate, c.name, c.on) == (3, 0.25, "env", False)
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"limit": 7, "models": {"m": "m.pt"}}))
    assert (load(file=j).limit, load(file=j).models) == (7, {"m": Path("m.pt")})


@pytest.mark.parametrize("content,match", [
    ('port = "x"\n', "^port in .*s.toml: must be an integer"),
    ("on = 1\n", "^on in .*: must be a boolean"),
    ('prot = 1\n', r"unknown setting\(s\) \['prot'\]"),
    ("port = \n", "does not parse"),
    ("= 1\n", "does not parse"),
])
def test_a_bad_file_is_named(tmp_path, content, match):
    f = tmp_path / "s.toml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load(file=f)


def test_flags_come_from_the_fields():
    p = argparse.ArgumentParser()
    settings.add_arguments(p, Example)
    args = vars(p.parse_args(["--port", "9", "--no-on", "--extra", "--other", "2",
                              "--models", "a=1", "--models", "b=2", "--mode", "b"]))
    c = load(flags=args)
    assert (c.port, c.on, c.extra, c.renamed, c.mode) == (9, False, True, 2.0, "b")
    assert c.models == {"a": Path("1"), "b": Path("2")}
    assert load(flags=vars(p.parse_args([]))) == Example()  # no flag overrides anything
    with pytest.raises(ConfigError, match=r"^--other: must be a number, got 'x'$"):
        load(flags=vars(p.parse_args(["--other", "x"])))


def test_a_required_setting_says_where_to_give_it():
    @dataclass
    class Needs:
        bundle: Path = setting(help="a bundle")

    with pytest.raises(ConfigError, match="'bundle' is required: give --bundle, "
                                          "CACHENET_BUNDLE or 'bundle' in the config file"):
        settings.load(Needs, environ={})
