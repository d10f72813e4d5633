#!/usr/bin/env python
"""Regenerate the Python code for proto/ into cachenet/protocol/v1/ (or --out DIR).

The .proto files keep the wire's own path, ``proto/cachenet/v1/`` (package
``cachenet.v1``), which is what clients in other languages include; the Python
code lives with the rest of the protocol layer, ``cachenet/protocol/v1/``, so
the generated imports (``from cachenet.v1 import ...``) are rewritten to it.

The generated files are committed; tests/cachenet/protocol/test_proto.py regenerates
them into a temporary directory and fails if the committed ones are stale. Needs
grpcio-tools (the dev extra); its version is pinned in constraints.txt so the
output is reproducible.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
#: Each proto package's Python path as protoc writes it, and where our code keeps it:
#: cachenet's own protocol, and the Open Inference Protocol (package ``inference``).
PACKAGES = {"cachenet.v1": "cachenet.protocol.v1", "inference": "cachenet.protocol.oip"}


def _package(rel: Path) -> tuple[str, str]:
    for wire, python in PACKAGES.items():
        if rel.parts[:len(wire.split("."))] == tuple(wire.split(".")):
            return wire, python
    raise SystemExit(f"{rel}: not in a known proto package ({sorted(PACKAGES)})")


def _placed(rel: Path) -> Path:
    """``cachenet/v1/x_pb2.py`` -> ``cachenet/protocol/v1/x_pb2.py``."""
    wire, python = _package(rel)
    return Path(*python.split("."), *rel.parts[len(wire.split(".")):])


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    sources = sorted(PROTO_DIR.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *map(str, sources)]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {[s.name for s in sources]}")
        for src in sorted(Path(tmp).rglob("*_pb2*")):
            rel = src.relative_to(tmp)
            wire, python = _package(rel)
            dst = out / _placed(rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = src.read_text().replace(f"from {wire} import", f"from {python} import")
            # The module name the generated classes record as theirs.
            text = re.sub(rf"'{re.escape(wire)}\.(\w+_pb2)'", rf"'{python}.\1'", text)
            dst.write_text(text)
            written.append(dst)
    for python in PACKAGES.values():
        init = out / Path(*python.split(".")) / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from proto/ by scripts/gen_proto.py; do not edit."""\n')
    return sorted(written)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
