"""Prometheus metrics: one registry per process, served on its own port.

Each part of the chassis registers its metrics the first time it is built, so a process
exposes only the metrics of the parts it runs (the gateway has no outbox backlog). gRPC and
HTTP use the names stock dashboards know: the gRPC ecosystem's `grpc_server_handled_total` /
`grpc_server_handling_seconds`, and OpenTelemetry's `http.server.request.duration` in its
Prometheus form. Names follow Prometheus conventions (checked with `promtool check metrics`);
counters carry no `_created` twin, which nothing reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from psycopg_pool import AsyncConnectionPool

AnyPool = AsyncConnectionPool[Any]

disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class GrpcServerMetrics:
    handled: Counter
    handling: Histogram


@cache
def grpc_server() -> GrpcServerMetrics:
    return GrpcServerMetrics(
        Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by method and status code",
            ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
        ),
        Histogram(
            "grpc_server_handling_seconds",
            "Time the server took to handle an RPC",
            ["grpc_service", "grpc_method", "grpc_type"],
            buckets=_LATENCY_BUCKETS,
        ),
    )


@cache
def http_server() -> Histogram:
    """OpenTelemetry's http.server.request.duration; its `_count` counts the requests."""
    return Histogram(
        "http_server_request_duration_seconds",
        "Duration of HTTP server requests",
        ["http_request_method", "http_route", "http_response_status_code"],
        buckets=_LATENCY_BUCKETS,
    )


@dataclass(frozen=True)
class OutboxMetrics:
    backlog: Gauge
    published: Counter
    publish_latency: Histogram


@cache
def outbox() -> OutboxMetrics:
    return OutboxMetrics(
        Gauge("trellis_outbox_backlog_events", "Outbox rows not yet published"),
        Counter("trellis_outbox_published_events", "Outbox rows published"),
        Histogram(
            "trellis_outbox_publish_latency_seconds",
            "Time from an event's commit to its PubAck",
            buckets=_LATENCY_BUCKETS,
        ),
    )


@dataclass(frozen=True)
class ConsumerMetrics:
    messages: Counter
    pending: Gauge
    dead_letters: Counter


@cache
def consumer() -> ConsumerMetrics:
    return ConsumerMetrics(
        Counter(
            "trellis_consumer_messages",
            "Events handled by consumers, by outcome",
            ["consumer", "outcome"],
        ),
        Gauge(
            "trellis_consumer_pending_messages",
            "Events in the stream a consumer has not yet received (lag)",
            ["consumer"],
        ),
        Counter(
            "trellis_dead_letter_messages", "Events moved to the dead-letter stream", ["consumer"]
        ),
    )


@cache
def projections() -> Counter:
    return Counter(
        "trellis_projection_stale_events",
        "Events a projection skipped because it already held a newer version of the record",
        ["projection"],
    )


@cache
def rate_limited() -> Counter:
    return Counter("trellis_rate_limited_requests", "Requests refused by a rate limit", ["limit"])


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


@cache
def _register_pool_collector() -> None:
    REGISTRY.register(PoolCollector(lambda: list(_pools.items())))


def track_pool(name: str, pool: AnyPool) -> None:
    _pools[name] = pool
    _register_pool_collector()


def serve_metrics(host: str, port: int) -> None:
    """Serve /metrics from a daemon thread, off the event loop (port 0 disables)."""
    if port:
        start_http_server(port, addr=host)
