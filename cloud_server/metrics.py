"""Prometheus metrics of the cloud server, on their own HTTP port (``--metrics-port``).

The concepts Triton exports, named as Prometheus has them (base units, ``_total`` on
counters), per model and version:

====================================================  ======================================
``cachenet_cloud_inference_request_success_total``    requests answered
``cachenet_cloud_inference_request_failure_total``    requests refused or failed, by ``reason``
``cachenet_cloud_inference_count_total``              inputs inferred (a request has 1..N)
``cachenet_cloud_inference_exec_count_total``         batches the model ran: the mean batch
                                                      size is inference_count / exec_count
``cachenet_cloud_inference_queue_duration_seconds``   time requests waited in the batcher's
                                                      queue (a histogram: ``_sum``, ``_count``)
``cachenet_cloud_inference_compute_duration_seconds`` time the batches they ran in took
``cachenet_cloud_request_duration_seconds``           from receiving a request to its answer
``cachenet_cloud_queue_requests``                     requests waiting now
``cachenet_cloud_spooled_requests_total``             inputs agents answered while the cloud
                                                      was away, uploaded since
``cachenet_cloud_agents``                             agents the control plane keeps state for
``cachenet_cloud_generations_total``                  image generations ended, by outcome
``cachenet_cloud_generation_batches_total``           sampler runs (each serves one or more)
====================================================  ======================================

Counts the server keeps anyway (the core's, the batcher's, the control plane's) are
read at scrape time by a collector; durations are observed as each request ends (a
listener on :class:`~cloud_server.inference.InferenceCore`). Each server has its own
registry, so several in one process (tests) do not mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cachenet.core.metrics import MetricsEndpoint
from cloud_server.inference import Answer

if TYPE_CHECKING:
    from cloud_server.server import ServerParts

#: Request and queue durations: 100 us to 10 s.
BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
           2.5, 5.0, 10.0)
FAILURES = ("invalid", "overloaded", "deadline", "error")


class _Counts(Collector):
    """What the server counts anyway, read when scraped."""

    def __init__(self, parts: ServerParts) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Any]:
        core, card = self.parts.core, self.parts.core.card
        labels = ["model", "version"]
        mv = [card.name, card.version]

        def counter(name: str, doc: str, value: float, extra: dict[str, str] | None = None):
            family = CounterMetricFamily(name, doc, labels=labels + list(extra or {}))
            family.add_metric(mv + list((extra or {}).values()), value)
            return family

        counts = dict(core.counts)
        yield counter("cachenet_cloud_inference_request_success",
                      "Inference requests answered", counts["ok"])
        failure = CounterMetricFamily("cachenet_cloud_inference_request_failure",
                                      "Inference requests refused or failed, by reason",
                                      labels=[*labels, "reason"])
        for reason in FAILURES:
            failure.add_metric([*mv, reason], counts[reason])
        yield failure
        stats = self.parts.batcher.stats
        yield counter("cachenet_cloud_inference_count", "Inputs inferred", stats.inputs)
        yield counter("cachenet_cloud_inference_exec_count", "Batches the model ran",
                      stats.batches)
        yield counter("cachenet_cloud_spooled_requests",
                      "Inputs agents answered while the cloud was away, uploaded since",
                      counts["spooled"])
        queued = GaugeMetricFamily("cachenet_cloud_queue_requests",
                                   "Requests waiting in the batcher's queue", labels=labels)
        queued.add_metric(mv, self.parts.batcher.queue.qsize())
        yield queued
        if self.parts.control is not None:
            yield GaugeMetricFamily("cachenet_cloud_agents",
                                    "Agents the control plane keeps state for",
                                    value=len(self.parts.control.seen))
        if self.parts.generation is not None:
            counts = dict(self.parts.generation.counts)
            gen = CounterMetricFamily("cachenet_cloud_generations",
                                      "Image generations ended, by outcome",
                                      labels=["outcome"])
            for outcome, n in counts.items():
                if outcome not in ("received", "batches", "batched"):
                    gen.add_metric([outcome], n)
            yield gen
            yield CounterMetricFamily("cachenet_cloud_generation_batches",
                                      "Sampler runs (a run may serve several generations)",
                                      value=counts.get("batches", 0))


class CloudMetrics(MetricsEndpoint):
    """The registry of one server and the listener that times its requests."""

    def __init__(self, parts: ServerParts) -> None:
        super().__init__()
        self.registry.register(_Counts(parts))
        card = parts.core.card
        kw = {"labelnames": ["model", "version"], "registry": self.registry, "buckets": BUCKETS}
        self.queue = Histogram("cachenet_cloud_inference_queue_duration_seconds",
                               "Time answered requests waited in the batcher's queue",
                               **kw).labels(card.name, card.version)
        self.compute = Histogram("cachenet_cloud_inference_compute_duration_seconds",
                                 "Time the batches answered requests ran in took",
                                 **kw).labels(card.name, card.version)
        request = Histogram("cachenet_cloud_request_duration_seconds",
                            "From receiving an inference request to its answer, by outcome",
                            labelnames=["model", "version", "outcome"], registry=self.registry,
                            buckets=BUCKETS)
        self.request = {o: request.labels(card.name, card.version, o)
                        for o in ("ok", *FAILURES)}
        parts.core.listeners.append(self.observe)

    def observe(self, outcome: str, answer: Answer | None, seconds: float) -> None:
        self.request[outcome].observe(seconds)
        if answer is not None:
            self.queue.observe(answer.queue_us / 1e6)
            self.compute.observe(answer.compute_us / 1e6)
