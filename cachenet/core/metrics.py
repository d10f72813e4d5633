"""A daemon's Prometheus endpoint: one registry served over HTTP in a thread.

Both daemons keep their own :class:`prometheus_client.CollectorRegistry` (several
servers in one process, as in tests, do not mix) and serve it here on
``--metrics-port``; ``0`` picks a free port, which :meth:`MetricsEndpoint.serve`
returns. The metrics themselves are the daemons' (``cloud_server.metrics``,
``edge_agent.metrics``).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


class MetricsEndpoint:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._server: Any = None

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread; the bound port."""
        self._server, _ = start_http_server(port, host, registry=self.registry)
        bound = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
