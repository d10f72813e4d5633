"""Prometheus metrics of the edge agent, on their own HTTP port (``metrics_port``).

==============================================  ============================================
``cachenet_edge_requests_total``                answers, by ``source``: edge, cloud,
                                                edge-fallback
``cachenet_edge_request_duration_seconds``      latency of each answer, by ``source``
                                                (a histogram)
``cachenet_edge_escalations_total``             inputs sent to the cloud
``cachenet_edge_fallbacks_total``               answers the edge gave in the cloud's place,
                                                by ``reason``
``cachenet_edge_gate_hits_total``               inputs the gate answered at the edge
``cachenet_edge_gate_hit_ratio``                hits / requests since start
``cachenet_edge_errors_total``                  requests answered with an error
``cachenet_edge_inflight_escalations``          escalations waiting for the cloud now
``cachenet_edge_pushes_total``                  pushed bundles, by ``outcome``: applied,
                                                rejected
``cachenet_edge_model_info``                    1, labelled with the serving bundle's
                                                ``name`` and ``version``
``cachenet_edge_spool_items`` / ``_bytes``      inputs waiting in the spool, and their size
``cachenet_edge_spool_uploaded_total``          spooled inputs uploaded
``cachenet_edge_cpu_ratio``                     device CPU use (0-1)
``cachenet_edge_memory_ratio``                  device memory use (0-1)
``cachenet_edge_process_resident_memory_bytes`` the agent's RSS
``cachenet_edge_temperature_celsius``           the hottest sensor, where there is one
==============================================  ============================================

Counts are read from the agent's own state at scrape time (a collector); latencies
are observed as answers go out. The registry is the agent's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cachenet.core.metrics import MetricsEndpoint
from edge_agent.stats import telemetry

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent

#: Answer latencies: 50 us (an edge hit) to 5 s (a slow escalation).
BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5, 5.0)
SOURCES = {"hits": "edge", "escalations": "cloud", "fallbacks": "edge-fallback"}


class _AgentState(Collector):
    def __init__(self, agent: EdgeAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        a = self.agent
        with a.stats.lock:
            counts = dict(a.stats.counts)
        requests = CounterMetricFamily("cachenet_edge_requests", "Answers, by source",
                                       labels=["source"])
        for key, source in SOURCES.items():
            requests.add_metric([source], counts.get(key, 0))
        yield requests
        yield CounterMetricFamily("cachenet_edge_escalations", "Inputs sent to the cloud",
                                  value=counts.get("escalated", 0))
        fallbacks = CounterMetricFamily("cachenet_edge_fallbacks",
                                        "Answers the edge gave in the cloud's place, by reason",
                                        labels=["reason"])
        for key, n in counts.items():
            if key.startswith("fallback:"):
                fallbacks.add_metric([key[9:]], n)
        yield fallbacks
        yield CounterMetricFamily("cachenet_edge_gate_hits",
                                  "Inputs the gate answered at the edge",
                                  value=counts.get("hits", 0))
        n = counts.get("requests", 0)
        yield GaugeMetricFamily("cachenet_edge_gate_hit_ratio",
                                "Share of requests the gate answered at the edge, since start",
                                value=counts.get("hits", 0) / n if n else 0.0)
        yield CounterMetricFamily("cachenet_edge_errors", "Requests answered with an error",
                                  value=counts.get("errors", 0))
        yield GaugeMetricFamily("cachenet_edge_inflight_escalations",
                                "Escalations waiting for the cloud", value=a.inflight)
        yield from self._control_and_model()
        yield from self._spool()
        yield from self._device()

    def _control_and_model(self) -> Iterator[Any]:
        control = self.agent.control
        pushes = CounterMetricFamily("cachenet_edge_pushes", "Pushed bundles, by outcome",
                                     labels=["outcome"])
        for outcome in ("applied", "rejected"):
            pushes.add_metric([outcome], control.counts[outcome] if control else 0)
        yield pushes
        model = self.agent.model
        if model is not None:
            info = GaugeMetricFamily("cachenet_edge_model_info", "The serving cache bundle",
                                     labels=["name", "version"])
            info.add_metric([model.manifest.name, model.version], 1)
            yield info

    def _spool(self) -> Iterator[Any]:
        spool = self.agent.spool
        if spool is None:
            return
        s = spool.snapshot()
        yield GaugeMetricFamily("cachenet_edge_spool_items", "Inputs waiting in the spool",
                                value=s["items"])
        yield GaugeMetricFamily("cachenet_edge_spool_bytes", "Bytes waiting in the spool",
                                value=s["bytes"])
        yield CounterMetricFamily("cachenet_edge_spool_uploaded", "Spooled inputs uploaded",
                                  value=s.get("uploaded", 0))

    def _device(self) -> Iterator[Any]:
        t = telemetry()
        yield GaugeMetricFamily("cachenet_edge_cpu_ratio", "Device CPU use (0-1)",
                                value=t["cpu_percent"] / 100)
        yield GaugeMetricFamily("cachenet_edge_memory_ratio", "Device memory use (0-1)",
                                value=t["memory_percent"] / 100)
        yield GaugeMetricFamily("cachenet_edge_process_resident_memory_bytes",
                                "The agent's resident memory", value=t["process_rss_bytes"])
        if t["temperature_c"] is not None:
            yield GaugeMetricFamily("cachenet_edge_temperature_celsius",
                                    "The hottest temperature sensor", value=t["temperature_c"])


class AgentMetrics(MetricsEndpoint):
    def __init__(self, agent: EdgeAgent) -> None:
        super().__init__()
        self.registry.register(_AgentState(agent))
        latency = Histogram("cachenet_edge_request_duration_seconds",
                            "From receiving a request to its answer, by source",
                            labelnames=["source"], registry=self.registry, buckets=BUCKETS)
        self.latency = {s: latency.labels(s) for s in SOURCES.values()}
        agent.stats.listeners.append(lambda source, seconds:
                                     self.latency[source].observe(seconds))
