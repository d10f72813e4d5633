"""What a device trusts: bundles signed by the fleet's key, no older than it has run.

With a trusted key configured (``trusted_key``, the fleet's ``signing.pub``), the
agent refuses to load a bundle the key does not verify, at start, on a reload and
when pushed (:func:`cachenet.core.signing.check_signature`), and refuses a push that
carries anything the signature does not cover (the cloud's ``full/`` files). It also
refuses a push created before the newest bundle it has accepted, a mark kept in its
state directory across restarts, unless ``allow_rollback``: an old bundle, validly
signed once, cannot be replayed to undo a fix. (``created`` is signed, so it cannot be
moved.) Without a key nothing is checked, and the agent says so at start.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

from cachenet.core import strictjson
from cachenet.core.manifest import read_manifest
from cachenet.core.signing import CLOUD_ONLY, check_signature, load_public_key
from cachenet.exceptions import IntegrityError

log = logging.getLogger(__name__)

MARK = "trust.json"


def _when(created: object) -> datetime.datetime:
    if not isinstance(created, str):
        raise IntegrityError("the bundle's 'created' is not a timestamp")
    try:
        when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise IntegrityError(f"the bundle's 'created' {created[:40]!r} is not a timestamp") \
            from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


class Trust:
    def __init__(self, trusted_key: Path | None, allow_rollback: bool = False,
                 state_dir: Path | None = None) -> None:
        self.key = load_public_key(trusted_key) if trusted_key is not None else None
        self.allow_rollback = allow_rollback
        self.mark = Path(state_dir) / MARK if state_dir is not None else None
        if self.key is None:
            log.warning("no trusted key configured: bundles are not checked for a signature "
                        "(set trusted_key to the fleet's signing.pub)")

    def check_bundle(self, manifest: dict[str, Any]) -> None:
        """IntegrityError unless the bundle is signed by the trusted key (if any)."""
        if self.key is not None:
            check_signature(manifest, self.key)

    def check_path(self, bundle: Path) -> None:
        """:meth:`check_bundle` of the bundle at ``bundle``, before anything loads it."""
        if self.key is not None:
            self.check_bundle(read_manifest(bundle).data)

    def check_push(self, manifest_json: bytes, running: dict[str, Any]) -> None:
        """IntegrityError unless a push's manifest is signed, carries only what the
        signature covers, and is no older than what this agent accepted (with a key)."""
        if self.key is None:
            return
        try:
            manifest = json.loads(manifest_json)
        except ValueError:
            raise IntegrityError("the push's manifest is not JSON") from None
        if not isinstance(manifest, dict):
            raise IntegrityError("the push's manifest is not a JSON object")
        self.check_bundle(manifest)
        files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
        if manifest.get("full_model") is not None or any(
                str(n).startswith(CLOUD_ONLY) for n in files):
            raise IntegrityError("the push carries the cloud's full/ files, which the "
                                 "signature does not cover")
        newest = max(self._floor(running.get("created")), self._mark())
        if not self.allow_rollback and _when(manifest.get("created")) < newest:
            raise IntegrityError(f"the pushed bundle was created {manifest['created'][:32]}, "
                                 f"before {newest.isoformat()} which this agent already "
                                 "ran: refused as a rollback (allow_rollback accepts it)")

    def accepted(self, manifest: dict[str, Any]) -> None:
        """Remember that a bundle this new was accepted (the mark rollbacks are held to)."""
        if self.key is None or self.mark is None:
            return
        try:
            when = _when(manifest.get("created"))
        except IntegrityError:
            return
        if when > self._mark():
            self.mark.parent.mkdir(parents=True, exist_ok=True)
            strictjson.write(self.mark, {"created": when.isoformat()}, indent=None)

    @staticmethod
    def _floor(created: object) -> datetime.datetime:
        """``created`` as a time, or the earliest one where it is not (never a reason to
        refuse every push)."""
        try:
            return _when(created)
        except IntegrityError:
            return datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)

    def _mark(self) -> datetime.datetime:
        floor = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
        if self.mark is None or not self.mark.exists():
            return floor
        try:
            return _when(json.loads(self.mark.read_text()).get("created"))
        except (ValueError, OSError, IntegrityError, AttributeError):
            log.warning("unreadable rollback mark %s: starting from the running bundle",
                        self.mark)
            return floor
