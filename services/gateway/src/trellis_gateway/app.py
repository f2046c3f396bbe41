"""Gateway wiring: settings -> pool -> key verifier, limiter, idempotency -> REST and gRPC."""

from __future__ import annotations

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

from crm.contacts.v1 import contacts_pb2
from crm.gateway.v1 import gateway_pb2
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

PUBLISHED = [
    gateway_pb2.DESCRIPTOR.services_by_name["TenantsService"],
    gateway_pb2.DESCRIPTOR.services_by_name["ApiKeysService"],
    contacts_pb2.DESCRIPTOR.services_by_name["ContactsService"],
]


def grantable_scopes() -> frozenset[str]:
    from crmkit.common_options import required_scope_of

    scopes = {required_scope_of(f"/{s.full_name}/{m.name}") for s in PUBLISHED for m in s.methods}
    return frozenset(s for s in scopes | {"admin"} if s and not s.startswith("platform:"))


async def wire(runtime: Runtime) -> list[Worker]:
    settings = runtime.settings
    assert isinstance(settings, GatewaySettings)
    secret = settings.internal_token_secret.get_secret_value()
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
    routes = build_routes(PUBLISHED)
    dispatcher = Dispatcher()
    dispatcher.add_local(Admin(runtime.pool, verifier, grantable_scopes()).handlers())
    dispatcher.add_backend(
        contacts_pb2.DESCRIPTOR.services_by_name["ContactsService"],
        settings.contacts_addr,
        secret,
        settings.backend_timeout_seconds,
    )
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
    grpc_services=[s.full_name for s in PUBLISHED],
    wire=wire,
    uses_bus=False,
)
