"""The layout is the architecture: layers only look down, and the edge never needs torch.

::

    sim                            everything below, and starts the daemons
    cli                            everything below sim, and sim
    cloud_server                   core, layercache, protocol, toolchain, fleet, diffusion
    edge_agent                     core, layercache, protocol  (what a device runs)
    fleet                          core, layercache, protocol, toolchain
    diffusion                      core, toolchain         (torch: generative models, step caches)
    toolchain                      core, layercache        (torch)
    protocol                       core
    layercache                     core                    (numpy, ONNX Runtime)
    core                           nothing of ours         (numpy, ONNX Runtime)
    exceptions                     nothing

Every import is checked, function-level ones included, by reading the source; then
a process with torch blocked imports what a device runs and shows that exactly
``core``, ``layercache``, ``protocol`` and ``edge_agent`` load, while the toolchain refuses to.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cachenet", "edge_agent", "cloud_server")
GENERATED = (ROOT / "cachenet" / "protocol" / "v1", ROOT / "cachenet" / "protocol" / "oip")

BELOW = {
    "exceptions": set(),
    "core": {"exceptions"},
    "layercache": {"exceptions", "core"},
    "protocol": {"exceptions", "core"},
    "toolchain": {"exceptions", "core", "layercache"},
    "fleet": {"exceptions", "core", "layercache", "protocol", "toolchain"},
    "diffusion": {"exceptions", "core", "toolchain"},
    "edge_agent": {"exceptions", "core", "layercache", "protocol"},
    "cloud_server": {"exceptions", "core", "layercache", "protocol", "toolchain", "fleet",
                     "diffusion"},
    "sim": {"exceptions", "core", "layercache", "protocol", "toolchain", "fleet", "edge_agent",
            "cloud_server", "diffusion"},
    "cli": {"exceptions", "core", "layercache", "protocol", "toolchain", "fleet", "sim",
            "diffusion"},
    # The package itself, and ``cachenet.client``, kept for applications written
    # against it: a re-export of the protocol's clients.
    "top": {"exceptions", "protocol"},
}


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("edge_agent", "cloud_server"):
        return parts[0]
    if len(parts) == 1 or parts[1] in ("__init__", "client"):
        return "top"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def our_imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if not any(g in p.parents for g in GENERATED))


def test_layers_only_look_down():
    upward = []
    for path in sources():
        mine = layer(module_name(path))
        for target in our_imports(path):
            theirs = layer(target)
            if theirs != mine and theirs not in BELOW[mine]:
                upward.append(f"{module_name(path)} ({mine}) imports {target} ({theirs})")
    assert not upward, "imports that do not look down:\n" + "\n".join(sorted(set(upward)))


def test_only_sim_and_the_cli_start_the_daemons():
    for path in sources():
        mine = layer(module_name(path))
        if mine in ("sim", "cli", "edge_agent", "cloud_server"):
            continue
        daemons = {t for t in our_imports(path) if layer(t) in ("edge_agent", "cloud_server")}
        assert not daemons, f"{module_name(path)} imports {daemons}"


EDGE = textwrap.dedent("""
    import importlib, json, pkgutil, sys

    class NoTorch:  # as on a Raspberry Pi: only the base install, no torch, no scipy
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "scipy", "sklearn"):
                raise ImportError(f"{name.split('.')[0]} is blocked (import of {name})")
            return None

    sys.meta_path.insert(0, NoTorch())

    def modules(package):
        pkg = importlib.import_module(package)
        yield package
        for info in pkgutil.walk_packages(pkg.__path__, package + "."):
            yield info.name

    for package in ("cachenet.core", "cachenet.layercache", "cachenet.protocol", "edge_agent"):
        for name in modules(package):
            importlib.import_module(name)
    from cachenet.core.calibration import clopper_pearson_upper  # the device's own bound
    bound = clopper_pearson_upper(3, 1000, 0.05)
    ours = sorted(m for m in sys.modules if m.split(".")[0] in
                  ("cachenet", "edge_agent", "cloud_server"))
    torch = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
    try:
        importlib.import_module("cachenet.toolchain")
        refused = None
    except Exception as exc:
        refused = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"ours": ours, "torch": torch, "toolchain": refused, "bound": bound}))
""")


def test_the_edge_loads_exactly_core_layercache_protocol_and_edge_agent_without_torch():
    proc = subprocess.run([sys.executable, "-c", EDGE], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] == []
    assert 0.0077 < result["bound"] < 0.0078  # Beta(4, 997)'s 0.95 quantile, without scipy
    layers = {layer(m) for m in result["ours"]}
    assert layers == {"top", "exceptions", "core", "layercache", "protocol", "edge_agent"}, \
        result["ours"]
    assert {m for m in result["ours"] if layer(m) == "top"} == {"cachenet"}
    assert result["toolchain"].startswith("ConfigError: cachenet.toolchain needs torch")
