"""Nothing accepted is lost: a durable, bounded spool of what the cloud did not see.

When an input the agent would have escalated is answered at the edge instead (the
cloud unreachable or too slow, too many escalations in flight), it is written here,
one file an input, and uploaded when the cloud answers again, so that the cloud's
specialiser learns from it and the agent counts how often its fallback agreed with
the cloud. Each item is written to a temporary name, synced, renamed and the folder
synced: a crash, or a power loss, leaves whole items or nothing, and a restarted agent
uploads what an earlier run spooled. The spool keeps at most ``max_items`` items,
``max_bytes`` bytes and ``max_age_s`` seconds: beyond, the oldest go, counted.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SUFFIX = ".npz"
TMP = ".tmp-"
#: Only files of this form are the spool's: anything else in the folder is left alone.
NAME = re.compile(r"^\d{12}-\d+\.npz$")


@dataclass
class Item:
    path: Path
    x: np.ndarray
    label: int  # the edge's answer, given while the cloud was away
    version: str  # the cache model that gave it
    time: float


class Spool:
    def __init__(self, root: Path, *, max_items: int = 100_000, max_bytes: int = 64 << 20,
                 max_age_s: float = 7 * 86400.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)  # camera frames: private
        self.max_items, self.max_bytes, self.max_age_s = max_items, max_bytes, max_age_s
        self.lock = threading.Lock()
        self.counts = {"spooled": 0, "uploaded": 0, "agreed": 0, "rejected": 0,
                       "dropped_full": 0, "dropped_age": 0, "unreadable": 0}
        for tmp in self.root.glob(f"{TMP}*"):  # a write a crash cut short
            if NAME.match(tmp.name[len(TMP):]):
                tmp.unlink(missing_ok=True)
        self._queue: collections.deque[Path] = collections.deque(sorted(
            (p for p in self.root.iterdir() if NAME.match(p.name)), key=self._seq_of))
        self._seq = max((self._seq_of(p) for p in self._queue), default=0)
        self._sizes = {p: p.stat().st_size for p in self._queue}
        self._total = sum(self._sizes.values())
        if self._queue:
            log.info("spool %s holds %d input(s) from an earlier run", self.root,
                     len(self._queue))

    @staticmethod
    def _seq_of(path: Path) -> int:
        try:
            return int(path.name.split("-", 1)[0])
        except ValueError:
            return 0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, x: np.ndarray, label: int, version: str) -> None:
        """Write one input durably (then make room, oldest first)."""
        buf = io.BytesIO()
        np.savez(buf, x=np.ascontiguousarray(x), label=np.int64(label),
                 version=np.array(version[:256]), time=np.float64(time.time()))
        data = buf.getvalue()
        with self.lock:
            self._seq += 1
            path = self.root / f"{self._seq:012d}-{os.getpid()}{SUFFIX}"
            tmp = self.root / f"{TMP}{path.name}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
            self._sync_folder()  # the rename itself survives a power loss
            self._queue.append(path)
            self._sizes[path] = len(data)
            self._total += len(data)
            self.counts["spooled"] += 1
            self._make_room()

    def _make_room(self) -> None:
        while self._queue and (len(self._queue) > self.max_items
                               or self.bytes > self.max_bytes):
            self._remove(self._queue[0])
            self.counts["dropped_full"] += 1

    def _sync_folder(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @property
    def bytes(self) -> int:
        return self._total

    def _remove(self, path: Path) -> None:
        if self._queue and self._queue[0] == path:
            self._queue.popleft()
        elif path in self._queue:
            self._queue.remove(path)
        self._total -= self._sizes.pop(path, 0)
        path.unlink(missing_ok=True)

    def oldest(self) -> Item | None:
        """The oldest item still young enough (older ones are dropped, counted)."""
        with self.lock:
            while self._queue:
                path = self._queue[0]
                try:
                    with np.load(path, allow_pickle=False) as f:
                        item = Item(path, f["x"], int(f["label"]), str(f["version"]),
                                    float(f["time"]))
                except Exception:
                    self._remove(path)
                    self.counts["unreadable"] += 1
                    continue
                if time.time() - item.time > self.max_age_s:
                    self._remove(path)
                    self.counts["dropped_age"] += 1
                    continue
                return item
            return None

    def done(self, item: Item, cloud_label: int | None) -> None:
        """``item`` reached the cloud (``cloud_label``), or was refused by it (None)."""
        with self.lock:
            self._remove(item.path)
            if cloud_label is None:
                self.counts["rejected"] += 1
            else:
                self.counts["uploaded"] += 1
                self.counts["agreed"] += int(cloud_label == item.label)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            try:
                oldest = self._queue[0].stat().st_mtime if self._queue else None
            except FileNotFoundError:
                oldest = None
            return {**self.counts, "items": len(self._queue), "bytes": self.bytes,
                    "oldest_age_s": round(time.time() - oldest, 1) if oldest else 0.0,
                    "max_items": self.max_items, "max_bytes": self.max_bytes,
                    "max_age_s": self.max_age_s}
