"""Prometheus metrics: requests by route and status (this process), and, read from the store
at scrape time, job durations by method, failures by code and queue depth (all workers)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from app.dispatch import Dispatcher
from core.telemetry import DURATION_BUCKETS

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _StoreCollector:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def collect(self):
        try:
            sums, buckets = self.dispatcher.telemetry.durations()
            failures = self.dispatcher.telemetry.failures()
            depth = self.dispatcher.queue_depth()
        except Exception:  # the store is away: scrape what this process has
            return
        histogram = HistogramMetricFamily("xai_job_method_seconds", "Time a method took in a job", labels=["method"])
        for method in sorted(sums):
            counts = [(_le(bound), buckets.get(f"{method}|{bound}", 0.0)) for bound in DURATION_BUCKETS]
            histogram.add_metric([method], counts, sum_value=sums[method])
        yield histogram
        failed = CounterMetricFamily("xai_job_failures", "Jobs that failed, by error code", labels=["code"])
        for code, count in sorted(failures.items()):
            failed.add_metric([code], count)
        yield failed
        queue = GaugeMetricFamily("xai_queue_depth", "Jobs waiting (and, embedded, running)", labels=["queue"])
        for name, count in sorted(depth.items()):
            queue.add_metric([name], count)
        yield queue


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("xai_http_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("xai_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry)
        self.jobs = Counter("xai_jobs_submitted", "Jobs accepted", ["model"], registry=self.registry)
        self.registry.register(_StoreCollector(dispatcher))

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Counts every HTTP request by route and status, and its latency, in the app's :class:`Metrics`.
    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) costs a task and
    a memory stream per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics: Metrics | None = getattr(scope["app"].state, "metrics", None) if scope["type"] == "http" else None
        if metrics is None:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            metrics.observe(scope, status[0], time.perf_counter() - started)
