"""Prometheus metrics: one registry per process, served on its own port.

Names follow Prometheus conventions (checked with `promtool check metrics` in the tests):
base units, `_total` on counters (added by the client), `_seconds` on durations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from psycopg_pool import AsyncConnectionPool

AnyPool = AsyncConnectionPool[Any]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

GRPC_REQUESTS = Counter(
    "trellis_grpc_server_requests",
    "gRPC requests handled, by method and status code",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_DURATION = Histogram(
    "trellis_grpc_server_request_duration_seconds",
    "Time to handle a gRPC request",
    ["grpc_service", "grpc_method"],
    buckets=_LATENCY_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "trellis_http_requests",
    "HTTP requests handled, by route and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "trellis_http_request_duration_seconds",
    "Time to handle an HTTP request",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
OUTBOX_BACKLOG = Gauge("trellis_outbox_backlog_events", "Outbox rows not yet published")
OUTBOX_PUBLISHED = Counter("trellis_outbox_published_events", "Outbox rows published")
OUTBOX_PUBLISH_LATENCY = Histogram(
    "trellis_outbox_publish_latency_seconds",
    "Time from an event's commit to its PubAck",
    buckets=_LATENCY_BUCKETS,
)
CONSUMER_MESSAGES = Counter(
    "trellis_consumer_messages",
    "Events handled by consumers, by outcome",
    ["consumer", "outcome"],
)
CONSUMER_PENDING = Gauge(
    "trellis_consumer_pending_messages",
    "Events in the stream a consumer has not yet received (lag)",
    ["consumer"],
)
DEAD_LETTERS = Counter(
    "trellis_dead_letter_messages",
    "Events moved to the dead-letter stream",
    ["consumer"],
)
RATE_LIMITED = Counter(
    "trellis_rate_limited_requests", "Requests refused by a rate limit", ["limit"]
)


class PoolCollector(Collector):
    """Reads the psycopg pool's own statistics at scrape time."""

    def __init__(self, pools: Callable[[], Iterable[tuple[str, AnyPool]]]) -> None:
        self._pools = pools

    def collect(self) -> Iterable[GaugeMetricFamily]:
        size = GaugeMetricFamily("trellis_db_pool_connections", "Pool connections", labels=["pool"])
        idle = GaugeMetricFamily(
            "trellis_db_pool_idle_connections", "Idle pool connections", labels=["pool"]
        )
        waiting = GaugeMetricFamily(
            "trellis_db_pool_waiting_requests", "Requests waiting for a connection", labels=["pool"]
        )
        for name, pool in self._pools():
            stats = pool.get_stats()
            size.add_metric([name], stats.get("pool_size", 0))
            idle.add_metric([name], stats.get("pool_available", 0))
            waiting.add_metric([name], stats.get("requests_waiting", 0))
        yield from (size, idle, waiting)


_pools: dict[str, AnyPool] = {}
_collector_registered = False


def track_pool(name: str, pool: AnyPool) -> None:
    global _collector_registered
    _pools[name] = pool
    if not _collector_registered:
        REGISTRY.register(PoolCollector(lambda: list(_pools.items())))
        _collector_registered = True


def serve_metrics(host: str, port: int) -> None:
    """Serve /metrics from a daemon thread, off the event loop (port 0 disables)."""
    if port:
        start_http_server(port, addr=host)
