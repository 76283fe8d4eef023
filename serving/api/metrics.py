"""Prometheus metrics of one app: its own registry, so two apps in one process never clash.

Exposed at ``/metrics`` in the text format. Requests are labelled by method, *route
template* (``/v1/customers/{customer_id}/scores``, never the raw path with its customer id)
and status; unmatched paths share the label ``<unmatched>``, so the label set stays small.
With several uvicorn workers each process exposes its own figures (one scrape reaches one
worker); run one worker per replica, or aggregate across replicas in Prometheus.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

#: seconds; dense below 25 ms, where the latency goal lives
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The service's metrics; :meth:`observe` is on every request's path, so it is cheap."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("crmscore_http_requests", "HTTP requests by method, route template and status.",
                                ("method", "route", "status"), registry=r)
        self.latency = Histogram("crmscore_http_request_duration_seconds",
                                 "Time from request to the end of the response, by method, route template "
                                 "and status.", ("method", "route", "status"), buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.in_flight = Gauge("crmscore_http_requests_in_flight", "Requests being processed (health and "
                               "metrics excluded).", registry=r)
        self.shed = Counter("crmscore_http_requests_shed", "Requests answered 503 because too many were in "
                            "flight.", registry=r)
        self.model_version = Gauge("crmscore_model_version_info", "1 for each model version being served.",
                                   ("kind", "registered_name", "version"), registry=r)
        self.bundle_loaded = Gauge("crmscore_bundle_loaded", "1 when a complete bundle is being served.",
                                   registry=r)
        self.loads = Counter("crmscore_bundle_loads", "Bundle load attempts by result.", ("result",), registry=r)
        self.load_seconds = Gauge("crmscore_bundle_load_duration_seconds", "Duration of the last successful "
                                  "bundle load.", registry=r)
        self.snapshot_customers = Gauge("crmscore_snapshot_customers", "Customers in the served snapshot.",
                                        registry=r)
        self.snapshot_as_of = Gauge("crmscore_snapshot_as_of_timestamp_seconds", "As-of date of the served "
                                    "snapshot, as a Unix time (0 if unknown).", registry=r)
        self.reasons = Counter("crmscore_reasons", "Customers whose reason codes came from the batch cache or "
                               "were computed on demand.", ("source",), registry=r)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._served: list[tuple[str, str, str]] = []

    def children(self, method: str, route: str, status: int) -> tuple[Counter, Histogram]:
        """The request counter and latency histogram of one method, route template and status."""
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            labels = (method, route, str(status))
            child = (self.requests.labels(*labels), self.latency.labels(*labels))
            self._children[key] = child
        return child

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        counter, histogram = self.children(method, route, status)
        counter.inc()
        histogram.observe(seconds)

    def bundle_swapped(self, versions: dict[str, tuple[str, str | None]], customers: int, as_of: date | None,
                       load_seconds: float) -> None:
        """Point the model and snapshot gauges at the bundle now served."""
        for labels in self._served:
            self.model_version.remove(*labels)
        self._served = [(kind, name, version) for kind, (name, version) in versions.items() if version]
        for labels in self._served:
            self.model_version.labels(*labels).set(1)
        self.bundle_loaded.set(1)
        self.loads.labels("ok").inc()
        self.load_seconds.set(load_seconds)
        self.snapshot_customers.set(customers)
        self.snapshot_as_of.set(datetime.combine(as_of, time(), tzinfo=UTC).timestamp() if as_of else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
