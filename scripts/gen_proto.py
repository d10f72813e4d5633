#!/usr/bin/env python
"""Regenerate the Python code for proto/ into cachenet/v1/ (or --out DIR).

The generated files are committed; tests/test_proto.py regenerates them into a
temporary directory and fails if the committed ones are stale. Needs
grpcio-tools (the dev extra); its version is pinned in constraints.txt so the
output is reproducible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    sources = sorted(PROTO_DIR.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *map(str, sources)]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {[s.name for s in sources]}")
    written = []
    for src in sources:
        pkg = out / src.parent.relative_to(PROTO_DIR)
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from proto/ by scripts/gen_proto.py; do not edit."""\n')
        written += sorted(pkg.glob(src.stem + "_pb2*"))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
