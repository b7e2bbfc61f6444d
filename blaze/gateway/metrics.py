"""The gateway's metrics, and the ASGI middleware that times every request.

Labels are bounded: the route template (``/v1/jobs/{job_id}``, never the id), the method and
the status code; requests that match no route count under ``route="unmatched"``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "blaze_gateway_requests",
            "HTTP requests answered, by route template, method and status code",
            ["route", "method", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "blaze_gateway_request_duration_seconds",
            "Time to answer an HTTP request (to the last byte for streams)",
            ["route", "method"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.submitted = Counter(
            "blaze_jobs_submitted",
            "Jobs the gateway published to Kafka, by kind and entry (jobs, batch, interactive)",
            ["kind", "via"],
            registry=r,
        )


class Metered:
    """ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_seen(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status[0])).inc()
            self.metrics.duration.labels(route, method).observe(time.perf_counter() - started)
