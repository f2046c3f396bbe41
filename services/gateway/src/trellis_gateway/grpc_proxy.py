"""gRPC for callers who prefer it: the gateway's gRPC port serves every published RPC.

Callers send their API key as `authorization: Bearer <key>` metadata; the chassis
interceptor authenticates it (with the gateway's API-key authenticator) and enforces the
RPC's scope, then this generic handler forwards the call through the same dispatcher as REST.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message

from crmkit import context, idempotency
from crmkit.errors import ServiceError, unauthenticated
from crmkit.grpc_server import Authenticate
from trellis_gateway.apikeys import KeyVerifier
from trellis_gateway.dispatch import Dispatcher
from trellis_gateway.ratelimit import RateLimiter
from trellis_gateway.routes import Route, RouteTable


def api_key_authenticator(verifier: KeyVerifier, limiter: RateLimiter) -> Authenticate:
    async def authenticate(md: dict[str, str], scope: str) -> context.Identity:
        ident = await verifier.verify_authorization(md.get("authorization", ""))
        if ident is None:
            raise unauthenticated("send a valid API key as 'authorization: Bearer <key>'")
        decision, which = limiter.check(ident.principal, ident.tenant_id)
        if not decision.allowed:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the {which} rate limit is exhausted; retry in {decision.retry_after} s",
            )
        return ident

    return authenticate


class ProxyHandler(grpc.GenericRpcHandler):
    def __init__(self, routes: RouteTable, dispatcher: Dispatcher) -> None:
        # Built once: grpc asks for a method's handler on every call.
        self._handlers = {r.full_method: _forwarder(r, dispatcher) for r in routes}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._handlers.get(details.method)


def _forwarder(route: Route, dispatcher: Dispatcher) -> grpc.RpcMethodHandler[Any, Any]:
    # The chassis interceptor has checked the caller, the scope and the limits.
    async def forward(request: Message, ctx: grpc.aio.ServicerContext[Any, Any]) -> Message:
        rid = context.request_id.get() or ""
        # The id the call is logged under (the caller's, if well-formed, else a new one), so
        # the caller can quote it whatever the outcome; initial metadata precedes an error.
        await ctx.send_initial_metadata((("x-request-id", rid),))
        key = next(
            (v for k, v in ctx.invocation_metadata() or () if k == idempotency.METADATA_KEY), ""
        )
        return await dispatcher.call(
            route.full_method,
            request,
            route.response_class,
            context.caller(),
            rid,
            idempotency_key=str(key),
        )

    return grpc.unary_unary_rpc_method_handler(
        forward,
        request_deserializer=route.request_class.FromString,
        response_serializer=lambda m: m.SerializeToString(),
    )
