"""Prometheus metrics of the gateway (served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "feedserve_requests_total",
            "HTTP requests by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "feedserve_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "feedserve_stage_seconds",
            "Feed latency per stage (featurize, retrieve, rank, hydrate_candidates)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.degraded = Counter(
            "feedserve_degraded_total",
            "Feed responses served by a fallback, by cause",
            ["reason"],
            registry=self.registry,
        )
        self.events = Counter(
            "feedserve_events_accepted_total", "Engagement events accepted", registry=self.registry
        )
        self.rejected = Counter(
            "feedserve_rejected_total",
            "Requests turned away before a route ran, by cause "
            "(unauthorized, rate_limited, overloaded, too_large, length_required)",
            ["reason"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "feedserve_in_flight_requests", "Requests being served", registry=self.registry
        )
        self.posts = Counter(
            "feedserve_posts_accepted_total", "Posts accepted for indexing", registry=self.registry
        )
