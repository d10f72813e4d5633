"""Where a result came from: the commit, the machine and the command, in every result file.

Every benchmark that writes JSON under ``bench/results/`` writes it through
:func:`write`, with a ``provenance`` object (:func:`provenance`) beside the figures::

    "provenance": {"commit": "4214ad2...", "dirty": false,
                   "command": "python -m bench.suite --bundle bundles/cifar --quick",
                   "machine": {"platform": ..., "cpu": ..., "cpus": 2, "python": ...,
                               "torch": ..., "onnxruntime": ..., "gpu": null, ...},
                   "written": "2026-12-07T19:30:00Z"}

and writes it with :func:`cachenet.core.strictjson.write`, which refuses NaN and
infinities (a figure that does not exist is None). ``dirty`` says whether tracked
files outside ``bench/results/`` differed from the commit; library versions are
those of the libraries the benchmark imported, so an edge-only measurement does
not load torch to say which one it did not use. Readers of older files, written
before this, find ``command`` and ``machine`` at the top level instead:
:func:`command_of` and :func:`machine_of` read either.
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cachenet.core import strictjson

ROOT = Path(__file__).resolve().parents[1]
#: Written by the benchmarks themselves: not what makes a tree dirty.
RESULTS = "bench/results"
#: Libraries whose versions are recorded when the benchmark has imported them.
LIBRARIES = ("torch", "onnxruntime", "numpy", "grpc", "zmq")


def command(module: str, argv: Sequence[str] | None = None) -> str:
    """The command line that runs ``module`` with ``argv`` (default: this process's)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *map(str, args)])


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit() -> dict[str, Any]:
    """``{"commit": HEAD, "dirty": bool}``; both None outside a git checkout."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  f":(exclude){RESULTS}")
    return {"commit": head, "dirty": None if status is None else bool(status)}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpu() -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except Exception:  # a broken driver is no GPU to report
            return None
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def machine() -> dict[str, Any]:
    """The machine and the libraries: platform, CPU model and count, memory, Python, the
    versions of those of :data:`LIBRARIES` imported so far, and the GPU if any."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": _cpu_model(),
                            "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30)
    except ImportError:
        info["memory_gib"] = None
    for name in LIBRARIES:
        module = sys.modules.get(name)
        if module is not None:
            info["grpcio" if name == "grpc" else name] = getattr(module, "__version__", None)
    info["gpu"] = _gpu()
    return info


@functools.cache
def _at_start() -> dict[str, Any]:
    return commit()


def provenance(module: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``provenance`` object: the commit (as it was when first asked: call
    :func:`start` before writing anything), the command, the machine, the time."""
    return {**_at_start(), "command": command(module, argv), "machine": machine(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def start() -> None:
    """Note the commit and whether the tree is dirty now, before the benchmark writes."""
    _at_start()


def write(path: Path, data: dict[str, Any], stamp: dict[str, Any], **kwargs: Any
          ) -> dict[str, Any]:
    """Write ``data`` with ``stamp`` (:func:`provenance`) to ``path`` as strict JSON (its
    folder made if need be); returns what was written. ``kwargs`` go to
    :func:`strictjson.write`."""
    out = {"provenance": stamp, **data}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    strictjson.write(path, out, **kwargs)
    return out


def command_of(result: dict[str, Any]) -> str:
    """The command that produced ``result``, written now or before provenance existed."""
    return (result.get("provenance") or {}).get("command") or result.get("command") or "?"


def machine_of(result: dict[str, Any]) -> dict[str, Any]:
    """The machine ``result`` came from, written now or before provenance existed."""
    return (result.get("provenance") or {}).get("machine") or result.get("machine") or {}
