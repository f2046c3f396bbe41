"""Gateway wiring: settings -> pool -> key verifier, limiter, idempotency -> REST and gRPC."""

from __future__ import annotations

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

from crm.gateway.v1 import gateway_pb2
from crmkit import auth, contract
from crmkit.migrations import migrations_dir
from crmkit.periodic import Periodic
from crmkit.service import Runtime, ServiceDefinition, Worker
from trellis_gateway import openapi
from trellis_gateway.admin import Admin
from trellis_gateway.apikeys import KeyVerifier
from trellis_gateway.config import GatewaySettings
from trellis_gateway.dispatch import Dispatcher
from trellis_gateway.grpc_proxy import ProxyHandler, api_key_authenticator
from trellis_gateway.http_app import Gateway, RequestContext
from trellis_gateway.http_server import HttpServer
from trellis_gateway.idempotency import IdempotencyStore
from trellis_gateway.ratelimit import RateLimiter, TokenBuckets
from trellis_gateway.routes import build_routes

OWN_SERVICES = list(gateway_pb2.DESCRIPTOR.services_by_name.values())


async def wire(runtime: Runtime) -> list[Worker]:
    """Publish the gateway's own services and those of every backend it has an address for
    (GATEWAY_<SERVICE>_ADDR, one per service that declares the gateway among its callers)."""
    settings = runtime.settings
    assert isinstance(settings, GatewaySettings)
    backends = {name: contract.services_of_domain(name) for name in settings.callees()}
    published = OWN_SERVICES + [s for services in backends.values() for s in services]
    runtime.grpc_services.extend(s.full_name for s in published)
    bootstrap = settings.bootstrap_admin_key
    verifier = KeyVerifier(
        runtime.pool,
        bootstrap.get_secret_value() if bootstrap else None,
        settings.api_key_cache_seconds,
    )
    limiter = RateLimiter(
        TokenBuckets(settings.rate_limit_key_per_second, settings.rate_limit_key_burst),
        TokenBuckets(settings.rate_limit_tenant_per_second, settings.rate_limit_tenant_burst),
    )
    routes = build_routes(published)
    dispatcher = Dispatcher()
    grantable = contract.grantable_scopes(published)
    dispatcher.add_local(Admin(runtime.pool, verifier, grantable).handlers())
    tokens = auth.TokenCache(settings.internal_token_secret.get_secret_value())
    for name, services in backends.items():
        address = settings.callees()[name]
        dispatcher.add_backend(name, services, address, tokens, settings.backend_timeout_seconds)
    dispatcher.check(f"/{s.full_name}/{m.name}" for s in published for m in s.methods)
    runtime.on_stop.append(dispatcher.close)
    runtime.authenticate = api_key_authenticator(verifier, limiter)
    runtime.server.add_generic_rpc_handlers([ProxyHandler(routes, dispatcher)])

    async def ready() -> bool:
        if runtime.stopping.is_set():
            return False
        try:
            async with runtime.pool.connection() as conn:
                await conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    store = IdempotencyStore(runtime.pool, settings.idempotency_ttl_hours)
    gateway = Gateway(
        routes=routes,
        dispatcher=dispatcher,
        verifier=verifier,
        limiter=limiter,
        idempotency=store,
        openapi=openapi.build_openapi(routes, title="Trellis CRM API", version="v1"),
        max_body_bytes=settings.max_body_bytes,
        ready=ready,
    )
    app = RequestContext(
        OpenTelemetryMiddleware(
            gateway.app(),
            excluded_urls="healthz,readyz,metrics",
            # One span per request is the useful part; a span per ASGI message costs more
            # CPU than the rest of the request's handling and says little.
            exclude_spans=["receive", "send"],
        )
    )
    return [
        HttpServer(app, settings.bind_host, settings.http_port, settings.shutdown_grace_seconds),
        Periodic("purge expired idempotency keys", 600, store.purge_expired),
    ]


DEFINITION = ServiceDefinition(
    name="gateway",
    migrations_dir=migrations_dir(__file__),  # packaged in the wheel, else the source tree
    grpc_services=[],  # what the configured backends publish: added by `wire`
    wire=wire,
    uses_bus=False,
    records_idempotency_keys=False,
)
