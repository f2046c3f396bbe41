"""The lifecycle every service shares: start in order, serve, and stop in order on SIGTERM.

Start: logging, tracing, metrics port, pool, NATS and streams, gRPC server, relay and
consumers; health turns SERVING once the database answers and migrations are current.
Stop (DESIGN.md §6): health NOT_SERVING, stop accepting and finish in-flight calls within the
grace period, drain relay and consumers, close NATS and the pool, flush telemetry.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from crmkit import auth, bus, db, grpc_server, housekeeping, metrics, migrations, telemetry
from crmkit.config import ServiceSettings
from crmkit.db import Pool
from crmkit.logging import configure_logging
from crmkit.outbox import OutboxRelay

log = logging.getLogger(__name__)


def loop_time() -> float:
    return asyncio.get_running_loop().time()


class Worker(Protocol):
    async def run(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class Runtime:
    """What a service's wiring gets to build its servicers and workers from."""

    settings: ServiceSettings
    pool: Pool
    nc: NATS | None
    js: JetStreamContext | None
    # How gRPC callers prove who they are: the gateway's internal token, unless the wiring
    # replaces it (the gateway itself accepts API keys).
    authenticate: grpc_server.Authenticate
    records_idempotency_keys: bool = True
    # The gRPC services served: the definition's, plus any the wiring adds (the gateway's
    # depend on its configured backends). Health, reflection and contract checks cover these.
    grpc_services: list[str] = field(default_factory=list)
    # Names whose health the wiring reports itself (the gateway mirrors its backends'); the
    # chassis's own SERVING/NOT_SERVING leaves them alone.
    mirrored_health: set[str] = field(default_factory=set)
    server: grpc.aio.Server = field(init=False)
    health: health.aio.HealthServicer = field(init=False)
    interceptor: grpc_server.ChassisInterceptor = field(init=False)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set when shutdown begins

    def __post_init__(self) -> None:
        self.server, self.interceptor = grpc_server.build_server(
            lambda md, scope: self.authenticate(md, scope),
            self.pool if self.records_idempotency_keys else None,
        )
        self.health = grpc_server.add_health(self.server)


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    migrations_dir: Path
    grpc_services: Sequence[str]
    # Adds servicers to runtime.server and returns the service's own workers (consumers, an
    # HTTP server, ...); the chassis adds the outbox relay when the service uses the bus.
    wire: Callable[[Runtime], Awaitable[list[Worker]]]
    uses_bus: bool = True
    # False for a process that forwards calls to the services that own the writes (the
    # gateway): they record the idempotency keys, in the transactions of the writes.
    records_idempotency_keys: bool = True

    def migrations(self) -> list[migrations.Migration]:
        return migrations.discover(self.name, self.migrations_dir)


async def _wait_for_migrations(defn: ServiceDefinition, pool: Pool) -> None:
    wanted = defn.migrations()
    while True:
        async with pool.connection() as conn:
            missing = await migrations.pending(conn, wanted)
        if not missing:
            return
        log.warning("waiting for migrations", extra={"pending": missing})
        await asyncio.sleep(2)


def _stop_on_signals() -> asyncio.Event:
    """SIGTERM or SIGINT starts the shutdown; later ones are ignored (a supervisor such as
    honcho or the kubelet may send both) so the shutdown runs to its end."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def begin() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, begin)
    return stop


_MIN_STEP_SECONDS = 5.0


async def _bounded(step: Awaitable[object], seconds: float, what: str) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        log.warning("shutdown step timed out", extra={"step": what, "seconds": seconds})


async def _close_bus(nc: NATS) -> None:
    """Drain NATS if it is there; if it went away first, closing is all that is left to do."""
    try:
        await nc.drain()
    except Exception as exc:  # the server may already be gone at shutdown
        log.warning("nats drain failed; closing", extra={"error": type(exc).__name__})
        await nc.close()


async def serve(
    defn: ServiceDefinition, settings: ServiceSettings, stop: asyncio.Event | None = None
) -> None:
    """Run until SIGTERM/SIGINT, or until `stop` is set when given (tests host services so)."""
    configure_logging(defn.name, settings.log_level)
    provider = telemetry.setup_tracing(defn.name, settings.tracing)
    metrics.serve_metrics(settings.bind_host, settings.metrics_port)

    pool = await db.open_pool(
        settings.database_url,
        name=defn.name,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
    )
    nc: NATS | None = None
    js: JetStreamContext | None = None
    if defn.uses_bus:
        nc = await bus.connect(settings.nats_url, name=defn.name)
        js = nc.jetstream()
        await bus.ensure_streams(
            js, settings.nats_stream_replicas, settings.nats_stream_max_age_days
        )

    runtime = Runtime(
        settings=settings,
        pool=pool,
        nc=nc,
        js=js,
        authenticate=grpc_server.internal_token_authenticator(
            auth.Verifier(settings.trusted_keys())
        ),
        records_idempotency_keys=defn.records_idempotency_keys,
        grpc_services=list(defn.grpc_services),
    )
    server = runtime.server
    health = runtime.health
    workers = await defn.wire(runtime)
    grpc_server.add_reflection(server, runtime.grpc_services)
    served = [s for s in runtime.grpc_services if s not in runtime.mirrored_health]
    await grpc_server.set_serving(health, served, serving=False)
    workers.append(
        housekeeping.worker(
            pool,
            housekeeping.Retention(inbox=timedelta(days=settings.nats_stream_max_age_days)),
        )
    )
    if js is not None:
        workers.insert(0, OutboxRelay(pool, js, source=f"/trellis/{defn.name}"))
    server.add_insecure_port(f"{settings.bind_host}:{settings.grpc_port}")
    await server.start()
    tasks = [asyncio.create_task(w.run(), name=type(w).__name__) for w in workers]

    if stop is None:
        stop = _stop_on_signals()

    ready = asyncio.create_task(_wait_for_migrations(defn, pool))
    ready.add_done_callback(
        lambda t: (
            None
            if t.cancelled()
            else asyncio.ensure_future(grpc_server.set_serving(health, served, True))
        )
    )
    log.info("serving", extra={"grpc_port": settings.grpc_port})
    await stop.wait()

    log.info("shutting down")
    ready.cancel()
    runtime.stopping.set()
    await health.enter_graceful_shutdown()
    grace_ends = loop_time() + settings.shutdown_grace_seconds
    await runtime.interceptor.drain(settings.shutdown_grace_seconds)
    await server.stop(max(0.5, grace_ends - loop_time()))
    # Every later step is bounded too: a worker stuck on a dependency that went away (NATS
    # gone mid-publish) must not keep the process alive past its grace.
    left = max(_MIN_STEP_SECONDS, grace_ends - loop_time())
    stops = asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
    await _bounded(stops, left, "stop workers")
    _, stuck = await asyncio.wait(tasks, timeout=_MIN_STEP_SECONDS)
    for task in stuck:
        task.cancel()
    for hook in runtime.on_stop:
        await _bounded(hook(), _MIN_STEP_SECONDS, "stop hook")
    if nc is not None:
        await _bounded(_close_bus(nc), _MIN_STEP_SECONDS, "close NATS")
    await pool.close(timeout=_MIN_STEP_SECONDS)
    if provider is not None:
        provider.shutdown()
    log.info("stopped")
