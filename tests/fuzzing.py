"""Property-based fuzzing, shared: settings and strategies for hostile input.

Every fuzz test runs ``CACHENET_FUZZ_EXAMPLES`` generated inputs (1,000 in the suite;
``bench/fuzz.sh`` runs more), derandomised, so the suite sees the same inputs on
every machine and a failure is reproduced by running it again.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("CACHENET_FUZZ_EXAMPLES", "1000"))

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

#: Any JSON value, small, with the awkward cases (NaN, huge numbers, deep nesting).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=24),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)

#: Shapes as a hostile client writes them.
SHAPES = st.one_of(
    st.lists(st.integers(min_value=-3, max_value=2**40), max_size=10),
    st.lists(st.sampled_from([1, 8, 3, 0, -1]), min_size=1, max_size=5),
    JSON)


def paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON tree (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree[:4]):
            out += paths(v, (*prefix, i))
    return out


def mutated(tree: Any, path: tuple, value: Any, delete: bool) -> Any:
    """A copy of ``tree`` with the value at ``path`` replaced by ``value`` (or deleted)."""
    out = copy.deepcopy(tree)
    node = out
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def bounded(message: str, limit: int = 600) -> bool:
    """An error message that quotes at most an excerpt of what was sent."""
    return isinstance(message, str) and 0 < len(message) <= limit


def finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
