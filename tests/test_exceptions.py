"""One exceptions tree: every error cachenet raises on purpose is in it, drawn in its
docstring; control-flow stops are not errors and stay out of it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import cachenet.exceptions as exc

ROOT = Path(__file__).resolve().parents[1]
GENERATED = (ROOT / "cachenet" / "protocol" / "v1", ROOT / "cachenet" / "protocol" / "oip")


def classes() -> dict[str, type]:
    return {name: c for name, c in vars(exc).items()
            if inspect.isclass(c) and issubclass(c, BaseException) and c.__module__ == exc.__name__}


def test_every_error_is_in_the_tree_and_stops_are_not():
    stops = {"Stopped", "TrainingStopped", "GenerationStopped"}
    for name, c in classes().items():
        if name in stops:
            assert issubclass(c, exc.Stopped) and not issubclass(c, exc.CachenetError), name
        else:
            assert issubclass(c, exc.CachenetError), f"{name} is outside the tree"


def test_the_docstring_draws_every_class():
    doc = exc.__doc__ or ""
    missing = [name for name in classes() if name not in doc]
    assert not missing, f"not drawn in cachenet/exceptions.py's docstring: {missing}"


def test_no_exception_class_is_defined_elsewhere():
    """Foreign errors become ours at one boundary; ours are all defined in one module."""
    found = []
    for path in sorted(p for pkg in ("cachenet", "edge_agent", "cloud_server")
                       for p in (ROOT / pkg).rglob("*.py")):
        if path == ROOT / "cachenet" / "exceptions.py" or any(g in path.parents
                                                                for g in GENERATED):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    (isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception")))
                    or (isinstance(b, ast.Attribute) and b.attr.endswith(("Error", "Exception")))
                    for b in node.bases):
                found.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not found, found


def test_refusals_and_cloud_errors_carry_structured_details():
    refused = exc.RequestRefused("INVALID_ARGUMENT", "input shape is [1, 2]",
                                 reason="input_shape", field="input.shape")
    assert (refused.code, refused.reason, refused.field) == ("INVALID_ARGUMENT",
                                                              "input_shape", "input.shape")
    assert exc.CloudOverloaded("busy", "RESOURCE_EXHAUSTED").retryable
    assert not exc.CloudRejected("no", "INVALID_ARGUMENT", reason="input_dtype").retryable
    assert exc.ProtocolError("bad", reason="unknown_field", field="InferRequest").reason
