"""Prometheus metrics of one service instance, all prefixed ``registry_``.

Each :class:`Metrics` owns its own ``CollectorRegistry`` (no process-global
state), so several apps in one process, as in tests, never share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """The counters and histograms of one service instance, in a registry of
    their own; :meth:`render` exposes them for ``/metrics``.

    ``requests``/``latency`` are labelled by method and route template (see
    :func:`registry.api.observe.route_template`), ``uploads`` by origin and
    result (an outcome such as ``created``, or an error code).
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "registry_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "registry_http_request_duration_seconds", "Time to answer a request, body included.",
            ["method", "route"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.bytes_in = Counter(
            "registry_http_received_bytes", "Request body bytes received.", registry=self.registry,
        )
        self.bytes_out = Counter(
            "registry_http_sent_bytes", "Response body bytes sent.", registry=self.registry,
        )
        self.uploads = Counter(
            "registry_uploads", "Uploads by origin and result (an outcome or an error code).",
            ["origin", "result"], registry=self.registry,
        )
        self.storage_errors = Counter(
            "registry_storage_errors", "Requests that failed because the storage backend failed.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
