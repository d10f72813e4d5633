"""Counters, latency percentiles and device telemetry for the agent's ``stats`` reply."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: answers in the class histogram the agent reports: short, so that it follows the stream.
CLASS_WINDOW = 200


class AgentStats:
    def __init__(self, window: int, class_window: int = CLASS_WINDOW) -> None:
        self.started = time.time()
        self.counts: collections.Counter[str] = collections.Counter()
        self.latencies_us: collections.deque[float] = collections.deque(maxlen=window)
        self.recent_labels: collections.deque[int] = collections.deque(maxlen=class_window)
        #: ``snapshot`` runs on the escalation loop (control reports) while requests count
        self.lock = threading.Lock()
        #: called with (source, seconds) for each answer (the metrics' latency histogram)
        self.listeners: list[Callable[[str, float], None]] = []

    def record(self, source: str, label: int, total_us: float, step: str | None = None
               ) -> None:
        """One answer: its source, label and latency; ``step``: the cascade step that
        answered at the edge."""
        with self.lock:
            self.counts["requests"] += 1
            if source == "edge" and step is not None:
                self.counts[f"step:{step}"] += 1
            self.counts[{"edge": "hits", "cloud": "escalations",
                         "edge-fallback": "fallbacks"}[source]] += 1
            self.latencies_us.append(total_us)
            self.recent_labels.append(label)
        for listener in self.listeners:
            listener(source, total_us / 1e6)

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            counts = collections.Counter(self.counts)
            latencies = list(self.latencies_us)
            labels = list(self.recent_labels)
        lat = np.asarray(latencies, float) if latencies else None
        pct = ({f"p{p}": float(np.percentile(lat, p)) for p in (50, 90, 99)}
               | {"mean": float(lat.mean()), "n": len(lat)}) if lat is not None else {}
        n = counts["requests"]
        hist = collections.Counter(labels)
        return {"uptime_s": time.time() - self.started,
                "requests": n, "hits": counts["hits"],
                "escalations": counts["escalations"],
                "fallbacks": counts["fallbacks"], "errors": counts["errors"],
                "hit_rate": counts["hits"] / n if n else None,
                "latency_us": pct,
                "recent_classes": {str(k): v for k, v in sorted(hist.items())},
                "fallback_reasons": {k[9:]: v for k, v in counts.items()
                                     if k.startswith("fallback:")},
                "edge_steps": {k[5:]: v for k, v in counts.items() if k.startswith("step:")},
                "audits_sent": counts["audits"], "escalations_sent": counts["escalated"]}


def telemetry() -> dict[str, Any]:
    """CPU, memory and (where the platform reports it) temperature, from psutil."""
    import psutil

    proc = psutil.Process()
    out: dict[str, Any] = {"cpu_percent": psutil.cpu_percent(interval=None),
                           "memory_percent": psutil.virtual_memory().percent,
                           "process_rss_bytes": proc.memory_info().rss,
                           "process_cpu_s": sum(proc.cpu_times()[:2])}
    sensors = getattr(psutil, "sensors_temperatures", None)
    temps = sensors() if sensors else {}
    readings = [t.current for entries in (temps or {}).values() for t in entries if t.current]
    out["temperature_c"] = max(readings) if readings else None
    return out
