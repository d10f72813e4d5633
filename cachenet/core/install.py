"""Install a pushed bundle into a device's state directory, and nowhere else.

The state directory holds one folder per installed version (``<root>/<version>/``)
and, while an install runs, a staging folder (``<root>/.incoming-*``). A push
comes from the network, so nothing in it becomes a path unchecked: the version
must match :data:`~cachenet.core.manifest.VERSION_PATTERN` (never ``.``, ``..``
or a path), every file name must be a plain relative path, the manifest must
list every file that came (a push may leave out files the device already holds:
a head bundle's model file is its general model's, and is taken, by its sha256,
from a bundle the agent has), and every path is checked to resolve inside
``root`` before anything is written, renamed or removed. Pruning removes only
version folders (a valid version name holding a manifest), never anything else
that shares the directory. Standard library only: the edge runs it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from cachenet.core.bundle import sha256_file, verify_bundle
from cachenet.core.manifest import (
    MANIFEST,
    VERSION_PATTERN,
    check_version,
    parse_manifest,
    safe_relpath,
)
from cachenet.exceptions import BundleError, CachenetError, IntegrityError

log = logging.getLogger(__name__)

STAGING_PREFIX = ".incoming-"


def _inside(root: Path, path: Path) -> Path:
    """``path`` if it resolves to somewhere strictly inside ``root``, else refuse."""
    resolved = path.resolve()
    if resolved == root or root not in resolved.parents:
        raise IntegrityError(f"{path} is outside the state directory {root}")
    return resolved


def _write_files(staging: Path, files: dict[str, bytes], manifest_json: bytes) -> None:
    for name, data in files.items():
        path = _inside(staging, staging / safe_relpath(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (staging / MANIFEST).write_bytes(manifest_json)


def _fill_from(staging: Path, manifest: dict, received: set[str],
               sources: tuple[Path, ...]) -> None:
    """Copy each file the manifest lists but the push left out from the first of
    ``sources`` (bundles the device holds) that has it with the listed sha256. A file
    no source has is refused, naming it."""
    for name, entry in manifest["files"].items():
        if name in received:
            continue
        for src in sources:
            base = src.resolve()
            path = (base / safe_relpath(name)).resolve()
            if base in path.parents and path.is_file() and sha256_file(path) == entry["sha256"]:
                dest = _inside(staging, staging / safe_relpath(name))
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
                break
        else:
            raise IntegrityError(f"the push leaves out {name}, and no bundle this agent "
                                 f"holds has it (sha256 {entry['sha256'][:12]}...)")


def _replaceable(path: Path, protect: tuple[Path, ...]) -> bool:
    """An installed version folder (a version name holding a manifest), not in use."""
    return (path.is_dir() and not path.is_symlink() and (path / MANIFEST).is_file()
            and VERSION_PATTERN.fullmatch(path.name) is not None
            and path.resolve() not in {p.resolve() for p in protect})


def install(root: Path, version: str, files: dict[str, bytes], manifest_json: bytes, *,
            keep: int = 3, protect: tuple[Path, ...] = (),
            sources: tuple[Path, ...] = ()) -> Path:
    """Write a pushed bundle to ``root/<version>`` atomically; keep the newest ``keep``.

    ``files`` (name -> bytes) and ``manifest_json`` must make a bundle that verifies,
    whose manifest says ``version`` and lists ``files``; a file it lists that the push
    left out is copied from the first bundle folder of ``sources`` that holds it with
    the listed sha256. Any failure, the disk's included, raises a
    :class:`~cachenet.exceptions.BundleError` and leaves ``root`` as it was.
    ``protect`` (the folders in use, the configured bundle) is never replaced nor
    pruned, and neither is a folder that is not an installed version.
    """
    check_version(version, "pushed version")
    try:
        root.mkdir(parents=True, exist_ok=True)
        root = root.resolve()
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    except OSError as exc:
        raise BundleError(f"cannot install version {version} into {root}: {exc}") from exc
    try:
        target = _inside(root, root / version)
        if target.parent != root:
            raise IntegrityError(f"version {version!r} does not name a folder of {root}")
        _write_files(staging, files, manifest_json)
        listed = parse_manifest(manifest_json, "the pushed manifest")
        if not set(files) <= set(listed["files"]):
            raise IntegrityError(f"the push carries {sorted(files)}, its manifest lists "
                                 f"{sorted(listed['files'])}")
        _fill_from(staging, listed, set(files), sources)
        manifest = verify_bundle(staging)  # the manifest vouches for exactly these bytes
        if manifest.version != version:
            raise IntegrityError(f"push says version {version}, its manifest says "
                                 f"{manifest.version}")
        if target.exists() or target.is_symlink():
            if not _replaceable(target, protect):
                raise IntegrityError(f"{target} exists and is not an installed version this "
                                     "agent may replace (it is in use, or not a bundle)")
            shutil.rmtree(target)
        staging.rename(target)
    except CachenetError:
        raise
    except OSError as exc:  # the disk, or a name the file system refuses
        raise BundleError(f"cannot install version {version} into {root}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    prune(root, keep=keep, protect=(*protect, target))
    return target


def discard(root: Path, path: Path, *, protect: tuple[Path, ...] = ()) -> None:
    """Remove the installed version folder ``path`` (one that failed to load), unless it
    is in ``protect``."""
    root = root.resolve()
    target = _inside(root, path)
    if target.parent == root and _replaceable(target, protect):
        shutil.rmtree(target, ignore_errors=True)


def installed(root: Path) -> list[Path]:
    """The version folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
             and VERSION_PATTERN.fullmatch(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def prune(root: Path, *, keep: int, protect: tuple[Path, ...] = ()) -> None:
    """Remove all but the newest ``keep`` version folders, never one in ``protect``."""
    keepers = {p.resolve() for p in protect}
    for old in installed(root)[:-keep] if keep > 0 else installed(root):
        if old.resolve() not in keepers:
            log.info("removing installed version %s (keeping %d)", old.name, keep)
            shutil.rmtree(old, ignore_errors=True)


def clean_staging(root: Path) -> None:
    """Remove half-installed pushes that an earlier run left when it was killed."""
    if root.is_dir():
        for stale in root.glob(f"{STAGING_PREFIX}*"):
            log.info("removing %s, left by an interrupted install", stale)
            shutil.rmtree(stale, ignore_errors=True)
