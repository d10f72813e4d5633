"""The bundle manifest (``manifest.json``): what it holds, checked field by field.

A manifest arrives from disk, from a build, or over the network in a push, and
every field of it ends up somewhere that trusts it: the version becomes a
folder name, file names become paths, ``classes`` answers requests, the gate's
threshold decides them. :func:`validate` checks the whole document against the
schema below before anything uses it, and raises :class:`ManifestError` naming
the field; :func:`read_manifest` reads and validates one from a bundle folder.

Schema (fields not listed are kept and not interpreted)::

    format         1
    name           non-empty string
    version        VERSION_PATTERN: letters, digits, '.', '_', '-'; starts with a
                   letter or digit (so never '.', '..' or a path)
    created        string
    input          {name: str, shape: [-1 | int >= 1, ...] (2-8 dims), dtype: a wire dtype}
    output         {shape: [..., width]}: width = len(classes), or a partition's
                   len(partition.classes) + 1; optionally features: {name: str, dim:
                   int >= 1}, a second output of the model file: the input of its
                   last layer, which a head reads
    classes        non-empty list of strings
    model          {file: bundle path}
    gate           {score: a registered score, threshold: finite number}
    variants       {precision: bundle path}                     (optional)
    variant_gates  {precision: gate}                            (optional)
    canary         {file: bundle path, n: int >= 0, inputs: bundle path (optional: the
                   inputs, 'x', from another file than the outputs)} | null  (optional)
    partition      {classes: distinct class indices, other_index: len(classes)} | null
    head           {file: bundle path, base: version, from_base: [bundle path, ...]
                   (optional)} | null (optional): the answer is a linear head on the
                   model file's features (output.features), which is the base bundle's
                   model; the file holds weight (width x dim) and bias (width);
                   from_base: files that are the base bundle's, byte for byte
    full_model     {files: [bundle path, ...]} | null           (optional)
    files          {bundle path: {sha256: 64 hex digits, bytes: int >= 0}}, non-empty
    signature      string | null                                (optional)

Every file the manifest uses must be listed in ``files``. No number in any
field, listed or not, is NaN or infinite: strict JSON has neither, and a figure
that does not exist is null. Standard library only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cachenet.core.gate import SCORES
from cachenet.core.prior import SECTION as PRIOR_SECTION
from cachenet.core.prior import from_manifest as prior_from_manifest
from cachenet.core.strictjson import nonfinite
from cachenet.core.tensors import DTYPES
from cachenet.exceptions import ManifestError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_FIELDS = ("format", "name", "version", "created", "input", "output", "classes",
                   "model", "gate", "files")
#: A bundle version: also the name of the folder an agent installs it in.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Larger manifest files are refused before they are parsed.
MAX_MANIFEST_BYTES = 4 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_version(version: object, where: str = "version") -> str:
    """``version`` if it is a valid bundle version, else :class:`ManifestError`."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        shown = repr(version)[:80]
        raise ManifestError(f"{where} {shown} is not a bundle version (1-64 letters, digits, "
                            "'.', '_' or '-', starting with a letter or digit)")
    return version


def safe_relpath(name: object) -> PurePosixPath:
    """A file name inside a bundle as a relative path, or :class:`ManifestError`."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise ManifestError(f"manifest names the file {name!r:.80}, which is not a plain "
                            "relative path")
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.parts[0] == ".":
        raise ManifestError(f"manifest names the file '{name:.80}', which is outside the bundle")
    return rel


@dataclass
class Manifest:
    """The parsed, validated ``manifest.json``; ``data`` keeps every field, known or not."""

    data: dict[str, Any]
    root: Path = field(default=Path("."))

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def version(self) -> str:
        return str(self.data["version"])

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def input(self) -> dict[str, Any]:
        return dict(self.data["input"])

    @property
    def gate(self) -> dict[str, Any]:
        return dict(self.data["gate"])

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return dict(self.data["files"])

    @property
    def partition(self) -> dict[str, Any] | None:
        return self.data.get("partition") or None

    @property
    def features(self) -> dict[str, Any] | None:
        """The model file's features output ({name, dim}), if it declares one."""
        return self.data["output"].get("features") or None

    @property
    def head(self) -> dict[str, Any] | None:
        return self.data.get("head") or None

    @property
    def output_width(self) -> int:
        """Logits per input that the model must give: one per class it answers."""
        part = self.partition
        return len(part["classes"]) + 1 if part else len(self.data["classes"])

    def model_file(self, precision: str = "fp32") -> str:
        variants = {"fp32": self.data["model"]["file"], **self.data.get("variants", {})}
        if precision not in variants:
            raise ManifestError(f"bundle {self.name} has no '{precision}' model; it has "
                                f"{sorted(variants)}")
        return str(variants[precision])


# -- the checks ---------------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _obj(data: dict, key: str, *, optional: bool = False, nullable: bool = False
         ) -> dict | None:
    """``data[key]`` as an object: absent is allowed when ``optional``, null when
    ``nullable``."""
    if key not in data and optional:
        return None
    v = data.get(key)
    if v is None and nullable:
        return None
    if not isinstance(v, dict):
        raise ManifestError(f"'{key}' must be an object, got {type(v).__name__}")
    return v


def _finite(v: object) -> bool:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an integer too large for a float
        return False


def _str(v: object, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ManifestError(f"'{where}' must be a non-empty string, got {v!r:.80}")
    return v


def _file(v: object, where: str) -> str:
    _str(v, where)
    safe_relpath(v)
    return str(v)


def _shape(v: object, where: str) -> list[int]:
    if not isinstance(v, list) or not 2 <= len(v) <= 8 or not all(_is_int(d) for d in v):
        raise ManifestError(f"'{where}' must be a list of 2 to 8 integers, got {v!r:.80}")
    if (v[0] != -1 and v[0] < 1) or any(d < 1 for d in v[1:]):
        raise ManifestError(f"'{where}' must be [-1 or a batch size, positive dims...], got {v}")
    return v


def _gate(v: object, where: str) -> None:
    if not isinstance(v, dict):
        raise ManifestError(f"'{where}' must be an object, got {type(v).__name__}")
    if not isinstance(v.get("score"), str) or v["score"] not in SCORES:
        raise ManifestError(f"'{where}.score' must be one of {', '.join(SCORES)}, got "
                            f"{v.get('score')!r:.80}")
    t = v.get("threshold")
    if not _finite(t):
        raise ManifestError(f"'{where}.threshold' must be a finite number, got {t!r:.80}")


def _check_io(data: dict) -> None:
    inp = _obj(data, "input")
    _str(inp.get("name"), "input.name")
    _shape(inp.get("shape"), "input.shape")
    if not isinstance(inp.get("dtype"), str) or inp["dtype"] not in DTYPES:
        raise ManifestError(f"'input.dtype' must be one of {', '.join(DTYPES)}, got "
                            f"{inp.get('dtype')!r:.80}")
    norm = inp.get("normalization")
    if norm is not None:
        scale = norm.get("scale") if isinstance(norm, dict) else None
        if not isinstance(norm, dict) or (scale is not None and not (
                isinstance(scale, int | float) and not isinstance(scale, bool)
                and math.isfinite(scale) and scale > 0)):
            raise ManifestError(f"'input.normalization' must be an object whose 'scale' is a "
                                f"positive number, got {norm!r:.80}")
    out = _obj(data, "output")
    shape = out.get("shape")
    if not isinstance(shape, list) or not shape or not _is_int(shape[-1]) or shape[-1] < 1:
        raise ManifestError(f"'output.shape' must end in the number of outputs, got {shape!r:.80}")
    features = _obj(out, "features", optional=True, nullable=True)
    if features is not None:
        _str(features.get("name"), "output.features.name")
        if not _is_int(features.get("dim")) or features["dim"] < 1:
            raise ManifestError(f"'output.features.dim' must be a positive integer, got "
                                f"{features.get('dim')!r:.40}")
    head = _obj(data, "head", optional=True, nullable=True)
    if head is not None:
        if features is None:
            raise ManifestError("'head' reads the model's features, but 'output.features' "
                                "does not declare them")
        check_version(head.get("base"), "head.base")


def _check_classes(data: dict) -> None:
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes or not all(
            isinstance(c, str) for c in classes):
        raise ManifestError(f"'classes' must be a non-empty list of strings, got "
                            f"{type(classes).__name__}")
    part = data.get("partition")
    if part is None:
        return
    if not isinstance(part, dict):
        raise ManifestError(f"'partition' must be an object or null, got {type(part).__name__}")
    own = part.get("classes")
    if (not isinstance(own, list) or not own or not all(_is_int(c) for c in own)
            or len(set(own)) != len(own) or not all(0 <= c < len(classes) for c in own)):
        raise ManifestError(f"'partition.classes' must be distinct indices into the "
                            f"{len(classes)} classes, got {own!r:.80}")
    if part.get("other_index") != len(own) or not _is_int(part.get("other_index")):
        raise ManifestError(f"'partition.other_index' must be {len(own)} (the output after "
                            f"the partition's classes), got {part.get('other_index')!r:.80}")


def _check_files(data: dict) -> None:
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise ManifestError("'files' must map file names to their sha256")
    for name, entry in files.items():
        safe_relpath(name)
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise ManifestError(f"files['{name}'] lacks its sha256")
        if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
            raise ManifestError(f"files['{name}'].sha256 must be 64 lowercase hex digits")
        if "bytes" in entry and (not _is_int(entry["bytes"]) or entry["bytes"] < 0):
            raise ManifestError(f"files['{name}'].bytes must be a non-negative integer")
    names = {str(PurePosixPath(n)) for n in files}
    for n in names:  # a file cannot also be a folder of another: 'a' and 'a/b'
        parents = {str(p) for p in PurePosixPath(n).parents if str(p) != "."}
        if parents & names:
            raise ManifestError(f"files lists both '{n}' and a folder of it")


def _check_references(data: dict) -> None:
    model = _obj(data, "model")
    referenced = [_file(model.get("file"), "model.file")]
    variants = _obj(data, "variants", optional=True) or {}
    referenced += [_file(f, f"variants.{k}") for k, f in variants.items()]
    for k, g in (_obj(data, "variant_gates", optional=True) or {}).items():
        _gate(g, f"variant_gates.{k}")
    canary = _obj(data, "canary", optional=True, nullable=True)
    if canary is not None:
        referenced.append(_file(canary.get("file"), "canary.file"))
        if canary.get("inputs") is not None:
            referenced.append(_file(canary["inputs"], "canary.inputs"))
        n = canary.get("n", 0)
        if not _is_int(n) or n < 0:
            raise ManifestError(f"'canary.n' must be a non-negative integer, got {n!r:.40}")
    head = data.get("head")
    if head is not None:
        referenced.append(_file(head.get("file"), "head.file"))
        from_base = head.get("from_base", [])
        if not isinstance(from_base, list):
            raise ManifestError("'head.from_base' must be a list of file names")
        referenced += [_file(f, "head.from_base[]") for f in from_base]
    full = _obj(data, "full_model", optional=True, nullable=True)
    if full is not None:
        files = full.get("files", [])
        if not isinstance(files, list):
            raise ManifestError("'full_model.files' must be a list of file names")
        referenced += [_file(f, "full_model.files[]") for f in files]
    unlisted = [f for f in referenced if f not in data["files"]]
    if unlisted:
        raise ManifestError(f"{', '.join(unlisted)} used by the manifest but not listed (with "
                            "a sha256) in 'files'")


def validate(data: object) -> dict[str, Any]:
    """``data`` if it is a manifest this cachenet can use (see the module docstring)."""
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a JSON object")
    bad = nonfinite(data)
    if bad is not None:  # NaN or an infinity: in no field, known or not
        raise ManifestError(f"'{bad[0]}' is {bad[1]}; a manifest holds finite numbers only")
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise ManifestError(f"the manifest lacks the field(s) {', '.join(missing)}")
    if data["format"] != FORMAT_VERSION or not _is_int(data["format"]):
        raise ManifestError(f"the manifest has format {data['format']!r:.40}; this cachenet "
                            f"reads format {FORMAT_VERSION}")
    _str(data["name"], "name")
    check_version(data["version"])
    if not isinstance(data["created"], str):
        raise ManifestError("'created' must be a string")
    _check_io(data)
    _check_classes(data)
    _gate(data["gate"], "gate")
    _check_files(data)
    _check_references(data)
    width = data["output"]["shape"][-1]
    part = data.get("partition")
    expected = len(part["classes"]) + 1 if part else len(data["classes"])
    if width != expected:
        raise ManifestError(f"'output.shape' says {width} outputs, but the manifest answers "
                            f"{expected} ({'partition classes + other' if part else 'classes'})")
    if data.get(PRIOR_SECTION) is not None:  # what an agent reads when it loads the bundle
        prior_from_manifest(data[PRIOR_SECTION], len(data["classes"]))
    if data.get("signature") is not None and not isinstance(data["signature"], str):
        raise ManifestError("'signature' must be a string or null")
    return data


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Decode and validate manifest bytes; errors name ``where`` they came from."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where} is {len(raw)} bytes, over the limit of "
                            f"{MAX_MANIFEST_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{where} is not readable JSON: {str(exc)[:200]}") from None
    try:
        return validate(data)
    except ManifestError as exc:
        raise ManifestError(f"{where}: {exc}") from None


def read_manifest(root: Path) -> Manifest:
    """Read and validate ``root/manifest.json``, without verifying the files."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise ManifestError(f"bundle directory {root} does not exist")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path} is {size} bytes, over the limit of "
                                f"{MAX_MANIFEST_BYTES}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path} is missing: {root} is not a cache bundle") from None
    except OSError as exc:
        raise ManifestError(f"{path} is not readable JSON: {exc}") from exc
    return Manifest(parse_manifest(raw, str(path)), root)
