"""Prometheus metrics (`clerk_gateway_` prefix) in a registry of the gateway's own.

Label children are created once per label tuple and kept, so recording a request is a
dict lookup and two increments. The same Reason string labels the metric, the log line
and the response body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.clerk.jwks import KeyCacheStats

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "clerk_gateway_requests",
            "Requests by route, decision, reason and status.",
            ["route", "access", "decision", "reason", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "clerk_gateway_request_duration_seconds",
            "Time from request head to the last byte of the response.",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "clerk_gateway_upstream_errors",
            "Upstream failures by upstream and kind.",
            ["upstream", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "clerk_gateway_requests_in_flight", "Requests being handled.", registry=r
        )
        self.jwks_fetches = Counter(
            "clerk_gateway_jwks_fetches", "Signing-key fetches by result.", ["result"], registry=r
        )
        self.policy_reloads = Counter(
            "clerk_gateway_policy_reloads", "Policy reloads by result.", ["result"], registry=r
        )
        self.webhooks = Counter(
            "clerk_gateway_webhooks",
            "Webhook deliveries by outcome and event type.",
            ["outcome", "event_type"],
            registry=r,
        )
        self._children: dict[tuple[str, str, str, str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        for result in ("success", "failure"):
            self.jwks_fetches.labels(result)
            self.policy_reloads.labels(result)

    def record(
        self, route: str, access: str, decision: str, reason: str, status: int, seconds: float
    ) -> None:
        key = (route, access, decision, reason, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(
                route, access, decision, reason, str(status)
            )
        child.inc()
        hist = self._durations.get(route)
        if hist is None:
            hist = self._durations[route] = self.duration.labels(route)
        hist.observe(seconds)

    def watch_keys(self, stats: Callable[[], KeyCacheStats]) -> None:
        self.registry.register(_KeyCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _KeyCollector(Collector):
    """Key state read at scrape time, so the request path never updates it."""

    def __init__(self, stats: Callable[[], KeyCacheStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        yield GaugeMetricFamily(
            "clerk_gateway_jwks_keys", "Signing keys held.", value=stats.key_count
        )
        yield GaugeMetricFamily(
            "clerk_gateway_jwks_ready",
            "1 when usable signing keys are held.",
            value=int(stats.ready),
        )
        if stats.age_s is not None:
            yield GaugeMetricFamily(
                "clerk_gateway_jwks_age_seconds",
                "Seconds since the last successful key fetch.",
                value=stats.age_s,
            )

    def describe(self) -> Iterable[Metric]:
        return []
