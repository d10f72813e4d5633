"""What the cloud missed: inputs the agent answered itself while the cloud was away.

An input answered ``edge-fallback`` is copied (:meth:`Keeper.keep`), written to the
agent's :class:`~edge_agent.spool.Spool` on worker threads, off the agent's loop, and
uploaded, oldest first and behind live escalations, when the cloud answers again
(:meth:`Keeper.upload`), so the specialiser and the audit learn from it. Uploads go on a
channel of their own, without gRPC's retries: an upload that fails is tried again
later, and counted. The spooled field is sent only to a cloud that declares it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cachenet.core.backoff import Backoff
from cachenet.exceptions import (
    CloudError,
    CloudOverloaded,
    CloudTimeout,
    CloudUnavailable,
)
from edge_agent.engine import Decision
from edge_agent.spool import Spool

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent
    from edge_agent.config import AgentConfig

log = logging.getLogger(__name__)

#: How long one spooled input's upload may take (not on any request's path).
UPLOAD_TIMEOUT_S = 10.0
#: Inputs waiting for the disk at most; past it, new ones are dropped (counted).
SPOOL_BACKLOG = 1000


def open_spool(c: AgentConfig) -> Spool | None:
    """The spool: ``spool_dir``, else ``spool-<agent id>`` in the state directory
    (``.pushed`` beside the bundle). A spool that cannot be opened is logged and
    left out: the agent serves without it rather than not at all."""
    state = c.state_dir or (Path(c.bundle).resolve().parent / ".pushed" if c.bundle
                            else Path(".pushed"))
    root = c.spool_dir or state / f"spool-{c.agent_id}"
    try:
        return Spool(root, max_items=c.spool_max_items, max_bytes=c.spool_max_bytes,
                     max_age_s=c.spool_max_age_s)
    except OSError as exc:
        log.error("no spool at %s (%s): inputs answered while the cloud is away will "
                  "not reach it", root, exc)
        return None


class Keeper:
    def __init__(self, agent: EdgeAgent, spool: Spool, client: Any) -> None:
        self.agent = agent
        self.spool = spool
        self.client = client  # the uploads' own channel to the cloud
        self._backlog = 0  # inputs copied for the spool, not yet on disk

    def keep(self, x: np.ndarray, decision: Decision) -> None:
        """Spool an input the cloud did not see (on the agent's loop; the disk on a worker
        thread)."""
        if self._backlog >= SPOOL_BACKLOG:  # the disk is behind: drop, counted
            self.agent.stats.count("spool:dropped_backlog")
            return
        self._backlog += 1
        self.agent.spawn(self._add(x.copy(), int(decision.answer["label"]),
                                   decision.answer["versions"]["cache"]))

    async def _add(self, x: np.ndarray, label: int, version: str) -> None:
        try:
            await asyncio.to_thread(self.spool.add, x, label, version)
        except OSError:  # a full or failing disk costs the item, not the agent
            log.exception("spooling an input failed")
            self.agent.stats.count("spool:write_failed")
        finally:
            with self.agent.lock:  # keep() may count from another thread (edge_agent.local)
                self._backlog -= 1

    async def upload(self) -> None:
        """Send spooled inputs, oldest first, while the cloud answers and live escalations
        leave room; back off, jittered, while it does not."""
        backoff = Backoff(0.5, 10.0)
        room = max(1, self.agent.config.max_inflight // 2)  # live escalations come first
        assert self.agent.capabilities_known is not None
        await self.agent.capabilities_known.wait()  # whether it takes the spooled field
        while True:
            if not len(self.spool) or self.agent.inflight >= room:
                await asyncio.sleep(0.2)
                continue
            try:
                item = await asyncio.to_thread(self.spool.oldest)
                if item is None:
                    continue
                cloud = await self.agent.ask_cloud(item.x, UPLOAD_TIMEOUT_S, item.version,
                                                   spooled=True, client=self.client)
            except (CloudUnavailable, CloudTimeout, CloudOverloaded):
                await asyncio.sleep(backoff.next())  # away, or busy: later
            except CloudError:  # refused for good (its classes changed, not allowed...)
                await asyncio.to_thread(self.spool.done, item, None)
            except Exception:
                log.exception("uploading a spooled input failed")
                await asyncio.sleep(backoff.next())
            else:
                await asyncio.to_thread(self.spool.done, item, int(cloud.labels[0]))
                backoff.reset()

    async def close(self) -> None:
        await self.client.close()
