"""JSON as every file cachenet writes holds it: finite numbers only.

``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which no strict
parser reads back (and which Ed25519 signing over a canonical form refuses).
Every manifest, report, ready file and benchmark result is written through
:func:`dumps` or :func:`write`, which refuse a non-finite number and name the
field that holds it; a figure that does not exist (the agreement of a gate that
answers nothing) is ``None`` in the data, ``null`` in the file, with a reason
beside it. :func:`nonfinite` finds such a field in data read from elsewhere
(the manifest validator refuses it). Standard library only.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from cachenet.exceptions import NonFiniteError


def nonfinite(obj: Any, where: str = "") -> tuple[str, float] | None:
    """The first ``(field, value)`` in ``obj`` whose value is a non-finite float, or None.
    Fields read like ``label_shift.calibration.agreement`` and ``rules[2].threshold``."""
    stack: list[tuple[str, Any]] = [(where, obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return path or "(the document)", value
        elif isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v)
                         for k, v in reversed(list(value.items())))
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN and infinities with :class:`NonFiniteError`."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        found = nonfinite(obj)
        if found is None:
            raise
        raise NonFiniteError(*found) from None


def write(path: Path, obj: Any, *, indent: int | None = 1, **kwargs: Any) -> None:
    """Write ``obj`` to ``path`` atomically (a temporary file, then a rename), as strict
    JSON ending in a newline; nothing is written when a value is not finite."""
    path = Path(path)
    text = dumps(obj, indent=indent, **kwargs) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
