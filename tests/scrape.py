"""Read a daemon's Prometheus metrics the way Prometheus does: GET /metrics, parse."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int, host: str = "127.0.0.1") -> dict[tuple[str, tuple], float]:
    """Every sample, keyed by (name, sorted label pairs)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, *, missing_ok: bool = False, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``; a metric the scrape
    does not have at all is an error (a vanished metric must not read as 0), unless
    ``missing_ok`` (a labelled family with no sample yet)."""
    if not missing_ok and not any(n == name for n, _ in samples):
        raise KeyError(f"the scrape has no metric {name}")
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))
