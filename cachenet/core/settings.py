"""Settings for both daemons, from one typed loader.

A daemon's settings are a dataclass; each field is one setting. Its annotation
is its type, its default the default, and :func:`setting` gives it the help
text its flag shows (and, where it differs from ``--field-name``, the flag)::

    @dataclass
    class ServerConfig:
        port: int = setting(50051, "port to serve on (0: any free one)")

Values come from four layers, each overriding the one before:

1. the defaults;
2. a config file, TOML or JSON (``--config``): ``port = 50051``; an unknown key is
   an error;
3. the environment: ``CACHENET_PORT=50051`` (unknown ``CACHENET_*`` variables are
   left alone: other parts of cachenet read some);
4. flags: ``--port 50051``; :func:`add_arguments` makes them from the fields.

Every value is read into its field's type the same way, whatever its layer, and
strictly: a boolean is ``true/false``, ``yes/no``, ``on/off`` or ``1/0`` (and
nothing else: ``CACHENET_SPECIALIZE=no`` is off, ``=maybe`` an error); a number is
a finite number; an optional setting given as an empty string is unset. Each
error is one line that names the setting as its layer spells it
(``CACHENET_PORT: must be an integer, got 'abc'``); the dataclass's own checks
(ranges, combinations) run once the layers are merged. Standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from cachenet.exceptions import ConfigError

ENV_PREFIX = "CACHENET_"
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")

T = TypeVar("T")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
            metavar: str | None = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is a setting: ``help`` is its flag's help text; ``flag``
    its flag where that is not ``--field-name`` (a boolean that defaults to True gets
    ``--no-field-name``)."""
    meta = {"help": help, "flag": flag, "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One setting as the loader sees it: its field, type, flag and variable."""

    name: str
    type: Any  # the annotation, resolved; Optional unwrapped into ``optional``
    optional: bool
    default: Any
    help: str
    flag: str
    metavar: str | None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``; ``(tp, False)`` otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def specs(cls: type) -> list[Spec]:
    """The settings of the dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap(hints[f.name])
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else dataclasses.MISSING)
        dashed = f.name.replace("_", "-")
        flag = f.metadata.get("flag") or (f"--no-{dashed}" if tp is bool and default is True
                                          else f"--{dashed}")
        out.append(Spec(f.name, tp, optional, default, f.metadata.get("help", ""), flag,
                        f.metadata.get("metavar")))
    return out


# -- reading one value ------------------------------------------------------------------------


def _number(value: Any, kind: type, where: str) -> int | float:
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{where}: must be {what}, got {value!r}")
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: must be {what}, got {value!r:.60}") from None
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{where}: must be an integer, got {value!r:.60}")
    if kind is float and isinstance(value, int | float):
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if not isinstance(value, int | float):
        raise ConfigError(f"{where}: must be {what}, got {type(value).__name__}")
    return value


def _boolean(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise ConfigError(f"{where}: must be a boolean ({'/'.join(TRUE)} or {'/'.join(FALSE)}), "
                      f"got {value!r:.60}")


def _named_paths(value: Any, where: str) -> dict[str, Path]:
    """``NAME=PATH`` pairs: a dict (a file), a list (repeated flags) or a comma-separated
    string (a variable)."""
    if isinstance(value, dict):
        pairs = [(k, v) for k, v in value.items()]
    else:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: must be NAME=PATH pairs, got {type(value).__name__}")
        pairs = []
        for item in (i for i in items if i != ""):
            name, sep, path = str(item).partition("=")
            if not sep:
                raise ConfigError(f"{where}: expected NAME=PATH, got {str(item)!r:.60}")
            pairs.append((name, path))
    out: dict[str, Path] = {}
    for name, path in pairs:
        if not isinstance(name, str) or not name or not isinstance(path, str | Path) \
                or not str(path):
            raise ConfigError(f"{where}: expected NAME=PATH, got {name!r:.30}={path!r:.30}")
        if name in out:
            raise ConfigError(f"{where}: names '{name}' twice")
        out[name] = Path(path)
    return out


def coerce(spec: Spec, value: Any, where: str) -> Any:
    """``value`` read into ``spec``'s type; ConfigError names ``where`` it came from."""
    tp = spec.type
    if value is None or (spec.optional and tp is not str and isinstance(value, str)
                         and not value.strip()):
        if spec.optional:
            return None
        raise ConfigError(f"{where}: must be set, got nothing")
    if tp is bool:
        return _boolean(value, where)
    if tp in (int, float):
        return _number(value, tp, where)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {type(value).__name__}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{where}: must be a path, got {value!r:.60}")
        return Path(value)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, choices))}, got "
                              f"{value!r:.60}")
        return value
    if typing.get_origin(tp) is dict:
        return _named_paths(value, where)
    raise TypeError(f"setting {spec.name} has a type the loader does not read: {tp}")


# -- the layers -------------------------------------------------------------------------------


def _toml() -> Any:
    """The TOML parser: the standard library's from Python 3.11, tomli on 3.10 (JetPack 6
    on a Jetson ships 3.10); the two share their API."""
    try:
        import tomllib  # novermin: 3.10 takes the branch below
    except ModuleNotFoundError:
        import tomli as tomllib
    return tomllib


def read_file(path: Path, cls: type) -> dict[str, Any]:
    """Settings from a TOML or JSON file; a key that is no setting of ``cls`` is an error."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        data = _toml().loads(text) if path.suffix == ".toml" else json.loads(text)
    except Exception as exc:  # json's and tomllib's own types
        raise ConfigError(f"config file {path} does not parse: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings")
    unknown = sorted(set(data) - {s.name for s in specs(cls)})
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {unknown}")
    return data


def load(cls: type[T], *, file: Path | None = None, environ: Mapping[str, str] | None = None,
         flags: Mapping[str, Any] | None = None) -> T:
    """``cls`` from its defaults, ``file``, ``environ`` (default: the process's) and
    ``flags`` (by field name; None: not given), each overriding the one before."""
    env = os.environ if environ is None else environ
    by_name = {s.name: s for s in specs(cls)}
    unknown = sorted(set(flags or {}) - set(by_name))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}")
    values: dict[str, Any] = {}
    if file is not None:
        for name, value in read_file(file, cls).items():
            values[name] = coerce(by_name[name], value, f"{name} in {file}")
    for spec in by_name.values():
        if spec.env in env:
            values[spec.name] = coerce(spec, env[spec.env], spec.env)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = coerce(by_name[name], value, by_name[name].flag)
    missing = [s for s in by_name.values() if s.required and s.name not in values]
    if missing:
        s = missing[0]
        raise ConfigError(f"setting '{s.name}' is required: give {s.flag}, {s.env} or "
                          f"'{s.name}' in the config file")
    return cls(**values)


_METAVARS = {Path: "PATH", int: "N", float: "NUM"}


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """A flag per setting of ``cls``. Flags take text (the loader reads it, as it reads
    the environment); their default is None, so that an absent flag overrides nothing."""
    for s in specs(cls):
        shown = ("" if s.default in (dataclasses.MISSING, None, "") or s.default == {}
                 else " (on by default; this flag turns it off)" if s.default is True
                 else "" if s.default is False else f" (default {s.default})")
        help_text = f"{s.help}{shown}; env {s.env}".lstrip("; ").replace("%", "%%")
        if s.type is bool:
            parser.add_argument(s.flag, dest=s.name, action="store_const",
                                const=not s.default if s.default in (True, False) else True,
                                default=None, help=help_text)
        elif typing.get_origin(s.type) is dict:
            parser.add_argument(s.flag, dest=s.name, action="append", default=None,
                                metavar=s.metavar or "NAME=PATH", help=help_text)
        else:
            choices = typing.get_args(s.type) if typing.get_origin(s.type) is Literal else None
            metavar = s.metavar or (None if choices else _METAVARS.get(s.type, "TEXT"))
            parser.add_argument(s.flag, dest=s.name, default=None, choices=choices,
                                metavar=metavar, help=help_text)
