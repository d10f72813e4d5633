"""A steady load on an agent: requests one after another on a thread, outcomes counted.

Used by the tests and the hardening benchmarks (``bench.soak``, ``bench.pushes``)::

    with Load(endpoint, x, policy="auto", cloud_every=3) as load:
        ...                      # the agent is kept busy meanwhile
    load.sent, load.ok, load.failed, load.sources, load.versions
"""

from __future__ import annotations

import collections
import threading

import numpy as np


class Load:
    """``policy`` for every request, except every ``cloud_every``-th (if set), which is
    sent to the cloud; ``versions``: the cache versions that answered."""

    def __init__(self, endpoint: str, x: np.ndarray, *, policy: str = "auto",
                 cloud_every: int = 0, timeout: float = 10.0) -> None:
        self.endpoint, self.x, self.policy, self.timeout = endpoint, x, policy, timeout
        self.cloud_every = cloud_every
        self.sent = self.ok = self.failed = 0
        self.sources: collections.Counter[str] = collections.Counter()
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load")

    def _run(self) -> None:
        from edge_agent.client import EdgeClient

        with EdgeClient(self.endpoint) as c:
            while not self._stop.is_set():
                self.sent += 1
                n = self.sent
                policy = ("cloud" if self.cloud_every and n % self.cloud_every == 0
                          else self.policy)
                try:
                    answer = c.infer(self.x[n % len(self.x)], timeout=self.timeout,
                                     policy=policy)
                except Exception:
                    self.failed += 1
                    continue
                self.ok += 1
                self.sources[answer["source"]] += 1
                self.versions.add(answer["versions"]["cache"])

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():  # also safe when it was never started
            self._thread.join(30)
