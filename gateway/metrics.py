"""Prometheus metrics (`clerk_gateway_` prefix): plain counters on the request path, read by
a collector at scrape time.

Recording a request is a dict increment and a histogram bucket increment: no lock, no
label lookup, no object per request (prometheus-client's own Counter takes a lock and a
label resolution per increment). The event loop is the only writer and the scrape runs on
the same loop, so plain integers are exact. prometheus-client still renders the text
format, and adds the process and platform collectors an operator expects. Counters carry
no `_created` series. The same Reason string labels the metric, the log line and the
response body; an allowed request has `reason=""`.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__, build
from gateway.clerk.jwks import KeyCacheStats

REQUEST_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


class Histogram:
    """Bucket counts (le semantics) and a sum: an observation is a bisect and two adds."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = REQUEST_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


RequestKey = tuple[str, str, str, str, int]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests: dict[RequestKey, int] = {}
        self.durations: dict[str, Histogram] = {}
        self.upstream_durations: dict[str, Histogram] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.jwks_fetches = {"success": 0, "failure": 0}
        self.policy_reloads = {"success": 0, "failure": 0}
        self.webhooks: dict[tuple[str, str], int] = {}
        self.handshakes: dict[str, int] = {}
        self.profile_lookups: dict[str, int] = {}
        self.in_flight = 0
        self.policy_digest = ""
        self.last_reload_success = time.time()
        self._keys: Callable[[], KeyCacheStats] | None = None
        self.registry.register(_Collector(self))
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(_Borrowed(collector))

    # ---- the request path -------------------------------------------------------------------

    def record(
        self, route: str, access: str, decision: str, reason: str, status: int, seconds: float
    ) -> None:
        key = (route, access, decision, reason, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        hist = self.durations.get(route)
        if hist is None:
            hist = self.durations[route] = Histogram()
        hist.observe(seconds)

    def upstream_latency(self, upstream: str) -> Histogram:
        """The histogram an upstream's exchanges are observed in (kept by its connections)."""
        hist = self.upstream_durations.get(upstream)
        if hist is None:
            hist = self.upstream_durations[upstream] = Histogram()
        return hist

    # ---- events -----------------------------------------------------------------------------

    def count_upstream_error(self, upstream: str, kind: str) -> None:
        key = (upstream, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def count_webhook(self, outcome: str, event_type: str) -> None:
        key = (outcome, event_type)
        self.webhooks[key] = self.webhooks.get(key, 0) + 1

    def count_handshake(self, result: str) -> None:
        self.handshakes[result] = self.handshakes.get(result, 0) + 1

    def count_profile_lookup(self, result: str) -> None:
        self.profile_lookups[result] = self.profile_lookups.get(result, 0) + 1

    def count_jwks_fetch(self, ok: bool) -> None:
        self.jwks_fetches["success" if ok else "failure"] += 1

    def count_reload(self, ok: bool) -> None:
        self.policy_reloads["success" if ok else "failure"] += 1
        if ok:
            self.last_reload_success = time.time()

    def watch_keys(self, stats: Callable[[], KeyCacheStats]) -> None:
        self._keys = stats

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _counter(
    name: str, doc: str, labels: list[str], values: Iterable[tuple[tuple[str, ...], float]]
) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


def _histograms(name: str, doc: str, label: str, hists: dict[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, hist in hists.items():
        family.add_metric([value], hist.buckets(), hist.total)
    return family


class _Collector(Collector):
    """Everything the gateway counts, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self.build = build()

    def collect(self) -> Iterable[Metric]:
        m = self.m
        yield _counter(
            "clerk_gateway_requests",
            "Requests by route, access, decision, reason (empty when allowed) and status.",
            ["route", "access", "decision", "reason", "status"],
            (((r, a, d, why, str(s)), n) for (r, a, d, why, s), n in m.requests.items()),
        )
        yield _histograms(
            "clerk_gateway_request_duration_seconds",
            "Time from the request head to the last byte of the response.",
            "route",
            m.durations,
        )
        yield _histograms(
            "clerk_gateway_upstream_duration_seconds",
            "Time from the request sent upstream to the last byte of the upstream's response.",
            "upstream",
            m.upstream_durations,
        )
        yield _counter(
            "clerk_gateway_upstream_errors",
            "Upstream failures by upstream and kind.",
            ["upstream", "kind"],
            m.upstream_errors.items(),
        )
        yield GaugeMetricFamily(
            "clerk_gateway_requests_in_flight", "Requests being forwarded.", value=m.in_flight
        )
        yield _counter(
            "clerk_gateway_jwks_fetches",
            "Signing-key fetches by result.",
            ["result"],
            (((k,), v) for k, v in m.jwks_fetches.items()),
        )
        yield _counter(
            "clerk_gateway_policy_reloads",
            "Policy reloads by result.",
            ["result"],
            (((k,), v) for k, v in m.policy_reloads.items()),
        )
        yield GaugeMetricFamily(
            "clerk_gateway_policy_last_reload_success_timestamp_seconds",
            "When the running policy was loaded (start or the last successful reload).",
            value=m.last_reload_success,
        )
        info = GaugeMetricFamily(
            "clerk_gateway_policy_info",
            "The running policy (digest of its file).",
            labels=["digest"],
        )
        info.add_metric([m.policy_digest], 1)
        yield info
        info = GaugeMetricFamily(
            "clerk_gateway_build_info",
            "The gateway's version, Python, and whether its request path is compiled.",
            labels=["version", "python", "build"],
        )
        info.add_metric([__version__, platform.python_version(), self.build], 1)
        yield info
        yield _counter(
            "clerk_gateway_webhooks",
            "Webhook deliveries by outcome and event type.",
            ["outcome", "event_type"],
            m.webhooks.items(),
        )
        yield _counter(
            "clerk_gateway_handshakes",
            "Clerk handshakes by result (started, resolved, failed, loop-stopped).",
            ["result"],
            (((k,), v) for k, v in m.handshakes.items()),
        )
        yield _counter(
            "clerk_gateway_user_profile_lookups",
            "Backend API user lookups by result.",
            ["result"],
            (((k,), v) for k, v in m.profile_lookups.items()),
        )
        if m._keys is not None:
            stats = m._keys()
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


class _Borrowed(Collector):
    """prometheus-client's process, platform and GC collectors, in our own registry."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterable[Metric]:
        return self.collector.collect()

    def describe(self) -> Iterable[Metric]:
        return []
