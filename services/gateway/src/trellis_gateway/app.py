"""Gateway wiring: settings -> pool -> key verifier, limiter, idempotency -> REST and gRPC."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from google.protobuf.descriptor import ServiceDescriptor

from crm.gateway.v1 import gateway_pb2
from crmkit import auth, contract
from crmkit.clock import Clock, system_clock
from crmkit.db import Pool
from crmkit.migrations import migrations_dir
from crmkit.periodic import Periodic
from crmkit.service import Runtime, ServiceDefinition, Worker
from trellis_gateway import openapi
from trellis_gateway.admin import Admin
from trellis_gateway.apikeys import KeyVerifier
from trellis_gateway.config import GatewaySettings
from trellis_gateway.dispatch import BackendHealth, Dispatcher, ServingStatus
from trellis_gateway.grpc_proxy import ProxyHandler, api_key_authenticator
from trellis_gateway.http_app import Gateway, asgi
from trellis_gateway.http_server import HttpServer
from trellis_gateway.idempotency import IdempotencyStore
from trellis_gateway.ratelimit import RateLimiter, TokenBuckets
from trellis_gateway.routes import RouteTable, build_routes

OWN_SERVICES = list(gateway_pb2.DESCRIPTOR.services_by_name.values())


@dataclass(frozen=True)
class Clocks:
    """Where the gateway's time comes from: caches and buckets count seconds, idempotency
    leases and expiry are stored as wall-clock times (shared by the replicas)."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Clock = system_clock


@dataclass(frozen=True)
class Parts:
    """The gateway's pieces, assembled from its settings (by `wire`, and by tests)."""

    published: list[ServiceDescriptor]
    routes: RouteTable
    dispatcher: Dispatcher
    verifier: KeyVerifier
    limiter: RateLimiter
    store: IdempotencyStore
    health: BackendHealth
    gateway: Gateway


def assemble(
    settings: GatewaySettings,
    pool: Pool,
    ready: Callable[[], Awaitable[bool]],
    clocks: Clocks = Clocks(),
    publish_health: Callable[[str, ServingStatus], Awaitable[None]] | None = None,
) -> Parts:
    """The gateway's own services and those of every backend it has an address for
    (GATEWAY_<SERVICE>_ADDR, one per service that declares the gateway among its callers)."""
    backends = {name: contract.services_of_domain(name) for name in settings.callees()}
    published = OWN_SERVICES + [s for services in backends.values() for s in services]
    bootstrap = settings.bootstrap_admin_key
    verifier = KeyVerifier(
        pool,
        bootstrap.get_secret_value() if bootstrap else None,
        settings.api_key_cache_seconds,
        settings.api_key_cache_size,
        clocks.monotonic,
    )
    limiter = RateLimiter(
        *(
            TokenBuckets(rate, burst, clock=clocks.monotonic)
            for rate, burst in (
                (settings.rate_limit_key_per_second, settings.rate_limit_key_burst),
                (settings.rate_limit_tenant_per_second, settings.rate_limit_tenant_burst),
                (settings.rate_limit_address_per_second, settings.rate_limit_address_burst),
            )
        )
    )
    routes = build_routes(published)
    dispatcher = Dispatcher()
    grantable = contract.grantable_scopes(published)
    dispatcher.add_local(Admin(pool, verifier, grantable).handlers())
    signing_key = settings.signing_key()
    if signing_key is None or signing_key.issuer != auth.GATEWAY:
        raise contract.ContractError("the gateway needs its signing key (INTERNAL_TOKEN_*)")
    tokens = auth.TokenCache(signing_key)
    for name, services in backends.items():
        address = settings.callees()[name]
        dispatcher.add_backend(name, services, address, tokens, settings.backend_timeout_seconds)
    dispatcher.check(f"/{s.full_name}/{m.name}" for s in published for m in s.methods)
    health = BackendHealth(dispatcher.backends, publish_health)
    store = IdempotencyStore(
        pool,
        ttl=timedelta(hours=settings.idempotency_ttl_hours),
        lease=timedelta(seconds=settings.lease_seconds),
        clock=clocks.wall,
    )
    gateway = Gateway(
        routes=routes,
        dispatcher=dispatcher,
        verifier=verifier,
        limiter=limiter,
        idempotency=store,
        openapi=openapi.build_openapi(routes, title="Trellis CRM API", version="v1"),
        max_body_bytes=settings.max_body_bytes,
        ready=ready,
        backends=health.statuses,
    )
    return Parts(published, routes, dispatcher, verifier, limiter, store, health, gateway)


async def wire(runtime: Runtime) -> list[Worker]:
    settings = runtime.settings
    assert isinstance(settings, GatewaySettings)

    async def ready() -> bool:
        if runtime.stopping.is_set():
            return False
        try:
            async with runtime.pool.connection() as conn:
                await conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    # The gateway's gRPC health tells, under each backend's service names, that backend's own.
    parts = assemble(settings, runtime.pool, ready, publish_health=runtime.health.set)
    runtime.grpc_services.extend(s.full_name for s in parts.published)
    runtime.mirrored_health.update(name for b in parts.dispatcher.backends for name in b.services)
    runtime.on_stop.append(parts.dispatcher.close)
    runtime.authenticate = api_key_authenticator(parts.verifier, parts.limiter)
    runtime.server.add_generic_rpc_handlers([ProxyHandler(parts.routes, parts.dispatcher)])
    http = HttpServer(
        asgi(parts.gateway),
        settings.bind_host,
        settings.http_port,
        settings.shutdown_grace_seconds,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        keep_alive_seconds=settings.keep_alive_seconds,
        trusted_proxies=settings.trusted_proxies,
    )
    purge = Periodic("purge expired idempotency keys", 600, parts.store.purge_expired)
    return [http, parts.health, purge]


DEFINITION = ServiceDefinition(
    name="gateway",
    migrations_dir=migrations_dir(__file__),  # packaged in the wheel, else the source tree
    grpc_services=[],  # what the configured backends publish: added by `wire`
    wire=wire,
    uses_bus=False,
    records_idempotency_keys=False,
)
