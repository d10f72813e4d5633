"""What the cloud missed: inputs the agent answered itself while the cloud was away.

An input answered ``edge-fallback`` is copied off the request path (:meth:`Keeper.keep`),
written to the agent's :class:`~edge_agent.spool.Spool` on the escalation loop's worker
threads, and uploaded, oldest first and behind live escalations, when the cloud answers
again (:meth:`Keeper.upload`), so the specialiser and the audit learn from it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cachenet.exceptions import (
    CloudError,
    CloudOverloaded,
    CloudRejected,
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
    def __init__(self, agent: EdgeAgent, spool: Spool) -> None:
        self.agent = agent
        self.spool = spool
        self.flag = True  # mark uploads as spooled (an older cloud refuses the field)
        self._backlog = 0  # inputs copied for the spool, not yet on disk
        self._backlog_lock = threading.Lock()

    def keep(self, x: np.ndarray, decision: Decision) -> None:
        """Spool an input the cloud did not see (from any thread; off the request path:
        a copy now, the disk on the escalation loop's worker threads)."""
        loop = self.agent.loop
        if loop is None:
            return
        with self._backlog_lock:
            if self._backlog >= SPOOL_BACKLOG:  # the disk is behind: drop, counted
                self.agent.stats.count("spool:dropped_backlog")
                return
            self._backlog += 1
        try:
            item = (x.copy(), int(decision.answer["label"]),
                    decision.answer["versions"]["cache"])
            loop.call_soon_threadsafe(
                lambda: loop.create_task(asyncio.to_thread(self._add, *item)))
        except Exception:  # the request is answered: spooling it must not answer twice
            log.exception("spooling an input failed")
            with self._backlog_lock:
                self._backlog -= 1

    def _add(self, x: np.ndarray, label: int, version: str) -> None:
        try:
            self.spool.add(x, label, version)
        except OSError:  # a full or failing disk costs the item, not the agent
            log.exception("spooling an input failed")
            self.agent.stats.count("spool:write_failed")
        finally:
            with self._backlog_lock:
                self._backlog -= 1

    async def upload(self) -> None:
        """On the escalation loop: send spooled inputs, oldest first, while the cloud
        answers and live escalations leave room; back off while it does not."""
        backoff = 0.5
        room = max(1, self.agent.config.max_inflight // 2)  # live escalations come first
        while True:
            if not len(self.spool) or self.agent.inflight >= room:
                await asyncio.sleep(0.2)
                continue
            try:
                item = await asyncio.to_thread(self.spool.oldest)
                if item is None:
                    continue
                cloud = await self.agent.ask_cloud(item.x, UPLOAD_TIMEOUT_S, item.version,
                                                   spooled=self.flag)
            except CloudRejected as exc:
                if self.flag and "unknown field" in str(exc):  # an older cloud
                    log.warning("the cloud does not know spooled inputs: sending them plain")
                    self.flag = False
                    continue
                await asyncio.to_thread(self.spool.done, item, None)
            except (CloudUnavailable, CloudTimeout, CloudOverloaded):
                await asyncio.sleep(backoff)  # away, or busy: later
                backoff = min(2 * backoff, 10.0)
            except CloudError:  # refused for good (its classes changed, not allowed...)
                await asyncio.to_thread(self.spool.done, item, None)
            except Exception:
                log.exception("uploading a spooled input failed")
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 10.0)
            else:
                await asyncio.to_thread(self.spool.done, item, int(cloud.labels[0]))
                backoff = 0.5
