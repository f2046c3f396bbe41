"""gRPC server pieces: the interceptor every service runs, and the server bootstrap.

The interceptor verifies the gateway's identity token, enforces the RPC's declared scope,
maps domain errors to rich statuses (never a stack trace), and records RED metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import grpc
import psycopg
import psycopg_pool
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from crmkit import auth, context, metrics
from crmkit.common_options import required_scope_of
from crmkit.errors import ServiceError, permission_denied, unauthenticated

log = logging.getLogger(__name__)

PUBLIC_SERVICES = frozenset(
    {
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
        "grpc.reflection.v1.ServerReflection",
    }
)

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Authenticate = Callable[[dict[str, str], str], Awaitable[context.Identity]]


def split_method(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def internal_token_authenticator(secret: str) -> Authenticate:
    verifier = auth.Verifier(secret)

    async def authenticate(md: dict[str, str], scope: str) -> context.Identity:
        token = md.get(auth.METADATA_KEY)
        if not token:
            raise unauthenticated("missing identity token")
        try:
            ident = verifier.verify(token)
        except auth.InvalidToken:
            raise unauthenticated("invalid identity token") from None
        return ident

    return authenticate


def _status_of(exc: BaseException) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
        return ServiceError(grpc.StatusCode.ABORTED, "conflict with a concurrent change; retry")
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError):
        log.warning("database unavailable", extra={"error": type(exc).__name__})
        return ServiceError(grpc.StatusCode.UNAVAILABLE, "database unavailable, retry later")
    log.error("unhandled error", exc_info=exc)
    return ServiceError(grpc.StatusCode.INTERNAL, "internal error")


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs


class ChassisInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticate: Authenticate) -> None:
        self._authenticate = authenticate
        self._draining = False
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        self._inflight = 0
        self._last_arrival = 0.0

    async def drain(self, grace: float, quiet: float = 0.25) -> None:
        """Refuse new calls with UNAVAILABLE and wait for the ones in flight to finish.

        grpc-aio's own `stop(grace)` answers CANCELLED to calls that reached the server but
        no handler yet (grpc/grpc#41785), which callers must not retry. Refusing them here
        first, with the retryable UNAVAILABLE, until nothing is in flight and callers have
        gone quiet, leaves `stop` nothing to cancel.
        """
        self._draining = True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            idle = time.monotonic() - self._last_arrival
            if self._inflight == 0 and idle >= quiet:
                return
            await asyncio.sleep(0.02)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        full_method: str = details.method
        service = split_method(full_method)[0]
        if handler is None or handler.unary_unary is None or service in PUBLIC_SERVICES:
            return handler
        # grpc-aio asks for a handler on every call; the wrapper is built once per method.
        cached = self._wrapped.get(full_method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[full_method] = (handler, self._wrap(handler, full_method))
        return cached[1]

    def _wrap(self, handler: Handler, full_method: str) -> Handler:
        service, method = split_method(full_method)
        scope = required_scope_of(full_method)
        inner: Behavior = handler.unary_unary  # type: ignore[assignment]
        authenticate = self._authenticate

        async def behavior(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._last_arrival = time.monotonic()
            if self._draining:
                await ctx.abort(grpc.StatusCode.UNAVAILABLE, "shutting down; retry")
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            failure: ServiceError | None = None
            self._inflight += 1
            try:
                md = {k: v for k, v in ctx.invocation_metadata() or () if isinstance(v, str)}
                context.request_id.set(md.get("x-request-id"))
                ident = await authenticate(md, scope)
                if not ident.allows(scope):
                    raise permission_denied(f"this call needs scope {scope}")
                context.identity.set(ident)
                return await inner(request, ctx)
            except grpc.aio.AbortError:
                code = ctx.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:  # every failure leaves as a status, never a trace
                failure = _status_of(exc)
                code = failure.code
            finally:
                self._inflight -= 1
                metrics.GRPC_REQUESTS.labels(service, method, code.name).inc()
                metrics.GRPC_DURATION.labels(service, method).observe(time.perf_counter() - started)
            await ctx.abort_with_status(failure.to_status())

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def build_server(authenticate: Authenticate) -> tuple[grpc.aio.Server, ChassisInterceptor]:
    tracing = aio_server_interceptor(
        filter_=filters.negate(filters.service_name(health.SERVICE_NAME))
    )
    chassis = ChassisInterceptor(authenticate)
    server = grpc.aio.server(
        interceptors=[tracing, chassis],
        options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)],
    )
    return server, chassis


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server, descriptor_pool.Default())
    return servicer


async def set_serving(
    servicer: health.aio.HealthServicer, service_names: Iterable[str], serving: bool
) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", *service_names):
        await servicer.set(name, status)
