"""A versioned store of cache bundles, per agent, on the cloud side.

Layout::

    <store>/agents/<agent>/versions/000001-<bundle version>/   one verified bundle each
    <store>/agents/<agent>/current                             the name of the live one
    <store>/agents/<agent>/history.jsonl                       pushes and rollbacks

Writes are atomic: a bundle is copied into a staging folder and renamed into
place, and ``current`` is replaced with ``os.replace``, so a reader never sees a
half-written version and a crash leaves the previous state. Operations on one
agent hold an exclusive lock. The last ``keep`` versions are kept (never the
current one is pruned). ``default`` is the fleet-wide agent name.

A pushed bundle is stored only once it loads as an agent loads it (its model in
ONNX Runtime, checked against its canaries, and its layer caches): a store never
makes current what no agent can run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cachenet.core import strictjson
from cachenet.core.bundle import verify_bundle
from cachenet.core.ids import check_agent_id
from cachenet.core.manifest import MANIFEST, read_manifest, safe_relpath
from cachenet.core.runtime import load_cache_model
from cachenet.core.signing import sign_bundle
from cachenet.exceptions import BundleError, CachenetError, ConfigError
from cachenet.layercache.edge import load_edge_layers

DEFAULT_AGENT = "default"


@dataclass
class StoredVersion:
    seq: int
    version: str
    name: str
    created: str
    path: str
    current: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _names(path: Path, wanted: str) -> bool:
    """Does ``wanted`` (a bundle version or a sequence number) name this stored version?"""
    seq, version = path.name.split("-", 1)
    return version == wanted or (wanted.isdigit() and int(seq) == int(wanted))


def _loads_on_an_agent(root: Path, source: Path) -> None:
    """BundleError unless the bundle at ``root`` loads as an agent loads it."""
    try:
        load_edge_layers(load_cache_model(root).manifest)
    except CachenetError as exc:
        raise BundleError(f"refusing {source}: an agent could not load it: "
                          f"{str(exc)[:300]}") from None


def default_store_dir() -> Path:
    return Path(os.environ.get("CACHENET_STORE", ".cachenet-store"))


def _copy_listed(src: Path, dst: Path, names: list[str]) -> None:
    """The manifest and the files it lists, nothing else: a bundle folder may hold
    anything beside them (links to elsewhere included), and none of it is the bundle's."""
    for name in [MANIFEST, *names]:
        target = dst / safe_relpath(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / safe_relpath(name), target, follow_symlinks=False)


class ModelStore:
    def __init__(self, root: Path, *, keep: int = 5, signing_key: Any = None) -> None:
        """``signing_key`` (an Ed25519 private key, :mod:`cachenet.core.signing`): every
        version stored is signed with it, as agents that pin the fleet's key require."""
        if keep < 1:
            raise ConfigError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.signing_key = signing_key

    def _agent_dir(self, agent: str) -> Path:
        check_agent_id(agent)
        return self.root / "agents" / agent

    @contextlib.contextmanager
    def _locked(self, agent: str) -> Iterator[Path]:
        d = self._agent_dir(agent)
        (d / "versions").mkdir(parents=True, exist_ok=True)
        with (d / ".lock").open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield d
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _versions(self, d: Path) -> list[Path]:
        return sorted(p for p in (d / "versions").iterdir()
                      if p.is_dir() and re.match(r"^\d{6}-", p.name))

    def _current_name(self, d: Path) -> str | None:
        try:
            return (d / "current").read_text().strip() or None
        except FileNotFoundError:
            return None

    def _set_current(self, d: Path, name: str, event: dict) -> None:
        tmp = d / f".current.{os.getpid()}"
        tmp.write_text(name + "\n")
        os.replace(tmp, d / "current")
        with (d / "history.jsonl").open("a") as f:
            f.write(strictjson.dumps({"time": time.time(), "current": name, **event}) + "\n")

    def push(self, bundle: Path, *, agent: str = DEFAULT_AGENT) -> StoredVersion:
        """Verify ``bundle``, store it as the agent's newest version, make it current."""
        manifest = verify_bundle(Path(bundle))
        with self._locked(agent) as d:
            existing = self._versions(d)
            seq = int(existing[-1].name[:6]) + 1 if existing else 1
            name = f"{seq:06d}-{manifest.version}"
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=d / "versions"))
            try:
                _copy_listed(Path(bundle), staging / "b", list(manifest.files))
                if self.signing_key is not None:
                    sign_bundle(staging / "b", self.signing_key)
                verify_bundle(staging / "b")  # what was written, not what was read
                _loads_on_an_agent(staging / "b", bundle)
                (staging / "b").rename(d / "versions" / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._set_current(d, name, {"event": "push", "source": str(bundle)})
            self._prune(d, name)
            return self._describe(d, d / "versions" / name)

    def _prune(self, d: Path, current: str) -> None:
        versions = self._versions(d)
        for old in versions[:-self.keep]:
            if old.name != current:
                shutil.rmtree(old, ignore_errors=True)

    def _describe(self, d: Path, path: Path) -> StoredVersion:
        m = read_manifest(path)
        return StoredVersion(int(path.name[:6]), m.version, m.name, str(m.data["created"]),
                             str(path), path.name == self._current_name(d))

    def list(self, *, agent: str = DEFAULT_AGENT) -> list[StoredVersion]:
        d = self._agent_dir(agent)
        if not (d / "versions").is_dir():
            return []
        return [self._describe(d, p) for p in self._versions(d)]

    def current(self, *, agent: str = DEFAULT_AGENT) -> StoredVersion | None:
        """The live version for ``agent``, else the fleet-wide one, else None."""
        for who in (agent, DEFAULT_AGENT) if agent != DEFAULT_AGENT else (agent,):
            d = self._agent_dir(who)
            name = self._current_name(d)
            if name and (d / "versions" / name).is_dir():
                return self._describe(d, d / "versions" / name)
        return None

    def rollback(self, *, agent: str = DEFAULT_AGENT, to: str | None = None) -> StoredVersion:
        """Make ``to`` (a bundle version, or a sequence number) current, else the one before."""
        with self._locked(agent) as d:
            versions = self._versions(d)
            current = self._current_name(d)
            if to is None:
                older = [p for p in versions if current is None or p.name < current]
                if not older:
                    raise BundleError(f"agent {agent} has no version older than {current}")
                target = older[-1]
            else:
                matches = [p for p in versions if _names(p, to)]
                if not matches:
                    raise BundleError(f"agent {agent} has no stored version '{to}'; it has "
                                      f"{[p.name for p in versions]}")
                target = matches[-1]
            verify_bundle(target)
            self._set_current(d, target.name, {"event": "rollback", "from": current})
            return self._describe(d, target)
