"""What a device trusts: bundles signed by the fleet's key, no older than what it runs.

With a trusted key configured (``trusted_key``, the fleet's ``signing.pub``), the
agent refuses to start on a bundle that the key does not verify, and refuses any
push the key does not verify (:func:`cachenet.core.signing.check_signature`). A
push created before the version the agent runs is refused too, unless
``allow_rollback``: an old bundle, validly signed once, cannot be replayed to
undo a fix. Without a key, pushes are taken as before (and the agent says so).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cachenet.core.signing import check_signature, load_public_key
from cachenet.exceptions import IntegrityError

log = logging.getLogger(__name__)


class Trust:
    def __init__(self, trusted_key: Path | None, allow_rollback: bool = False) -> None:
        self.key = load_public_key(trusted_key) if trusted_key is not None else None
        self.allow_rollback = allow_rollback
        if self.key is None:
            log.warning("no trusted key configured: pushed bundles are not checked for a "
                        "signature (set trusted_key to the fleet's signing.pub)")

    def check_bundle(self, manifest: dict[str, Any]) -> None:
        """IntegrityError unless the bundle is signed by the trusted key (if any)."""
        if self.key is not None:
            check_signature(manifest, self.key)

    def check_push(self, manifest_json: bytes, running: dict[str, Any]) -> None:
        """IntegrityError unless a push's manifest is signed (if a key is set) and no
        older than the ``running`` manifest (unless rollbacks are allowed)."""
        try:
            manifest = json.loads(manifest_json)
        except ValueError:
            raise IntegrityError("the push's manifest is not JSON") from None
        if not isinstance(manifest, dict):
            raise IntegrityError("the push's manifest is not a JSON object")
        self.check_bundle(manifest)
        created, now = manifest.get("created"), running.get("created")
        if (not self.allow_rollback and isinstance(created, str) and isinstance(now, str)
                and created < now):
            raise IntegrityError(f"the pushed bundle was created {created[:32]}, before the "
                                 f"running one ({now[:32]}): refused as a rollback "
                                 "(allow_rollback accepts it)")
