"""gRPC server pieces: the interceptor that holds every per-RPC rule, and the server bootstrap.

For each call the interceptor verifies the caller (the gateway's identity token), enforces the
RPC's declared scope and field limits, gives the handler the caller with a canonical tenant id,
records the caller's idempotency key with the call's effect, retries a transaction PostgreSQL
chose as a deadlock victim, maps errors to rich statuses (never a stack trace) and records RED
metrics. Handlers hold only their use case.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import psycopg
import psycopg_pool
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from crmkit import auth, context, contract, db, idempotency, metrics
from crmkit.errors import Invalid, ServiceError, permission_denied, unauthenticated
from crmkit.ids import canonical_uuid
from crmkit.limits import check_limits

log = logging.getLogger(__name__)

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
PUBLIC_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1})

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Authenticate = Callable[[dict[str, str], str], Awaitable[context.Identity]]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs

_DEADLOCK_ATTEMPTS = 3


def internal_token_authenticator(verifier: auth.Verifier) -> Authenticate:
    async def authenticate(md: dict[str, str], scope: str) -> context.Identity:
        token = md.get(auth.METADATA_KEY)
        if not token:
            raise unauthenticated("missing identity token")
        try:
            return verifier.verify(token)
        except auth.InvalidToken:
            raise unauthenticated("invalid identity token") from None

    return authenticate


def status_of(exc: BaseException) -> ServiceError:
    """The status a failure leaves with: its own for a ServiceError, else a safe generic one."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
        return ServiceError(grpc.StatusCode.ABORTED, "conflict with a concurrent change; retry")
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError):
        log.warning("database unavailable", extra={"error": type(exc).__name__})
        return ServiceError(grpc.StatusCode.UNAVAILABLE, "database unavailable, retry later")
    log.error("unhandled error", exc_info=exc)
    return ServiceError(grpc.StatusCode.INTERNAL, "internal error")


@dataclass(frozen=True)
class _Undecodable:
    """What the lenient deserializer returns for bytes that are not the request message."""

    reason: str


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    # grpc answers a deserializer's exception with UNKNOWN; a body that is not the request
    # message is the caller's mistake, so it is handed on and refused as INVALID_ARGUMENT.
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data) if deserialize is not None else data
        except (DecodeError, ValueError, TypeError) as exc:
            return _Undecodable(str(exc) or type(exc).__name__)

    return parse


def _canonical(ident: context.Identity) -> context.Identity:
    tenant_id = canonical_uuid(ident.tenant_id)
    if tenant_id is None:
        raise unauthenticated("the identity names no valid tenant")
    if tenant_id == ident.tenant_id:
        return ident
    return context.Identity(tenant_id, ident.principal, ident.scopes)


class ChassisInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticate: Authenticate, pool: db.Pool | None) -> None:
        self._authenticate = authenticate
        # Where idempotency keys are recorded with the calls' effects; None for a process
        # that only forwards calls (the gateway), whose backends record them.
        self._pool = pool
        self._draining = False
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        self._inflight = 0
        self._last_refusal = 0.0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drain(self, grace: float, quiet: float = 0.25, settle_at_most: float = 2.0) -> None:
        """Refuse new calls with UNAVAILABLE and wait for the ones in flight to finish.

        grpc-aio's own `stop(grace)` answers CANCELLED to calls that reached the server but
        no handler yet (grpc/grpc#41785), which callers must not retry; refusing every new
        call here first, with the retryable UNAVAILABLE, and stopping in a pause of callers
        (`quiet` seconds without one), leaves `stop` nothing to cancel. Refused callers are
        waited for a pause only briefly (`settle_at_most`): under steady traffic there may be
        none, and the calls in flight are what the grace period is for.
        """
        self._draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("calls still in flight at the end of the grace period")
            return
        settled_by = time.monotonic() + settle_at_most
        while time.monotonic() < settled_by:
            if time.monotonic() - self._last_refusal >= quiet:
                return
            await asyncio.sleep(0.02)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        full_method: str = details.method
        service = contract.split_method(full_method)[0]
        if handler is None or service in PUBLIC_SERVICES:
            return handler
        # grpc-aio asks for a handler on every call; the wrapper is built once per method.
        cached = self._wrapped.get(full_method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[full_method] = (handler, self._wrap(handler, full_method))
        return cached[1]

    def _wrap(self, handler: Handler, full_method: str) -> Handler:
        try:
            method = contract.method(full_method)
        except contract.ContractError:
            method = None
        if method is None or handler.unary_unary is None:
            # Fail closed: nothing is served that the contract does not describe as unary.
            return grpc.unary_unary_rpc_method_handler(_refuse_undeclared)
        service, name = contract.split_method(full_method)
        scope = contract.required_scope(method)
        records_key = self._pool is not None and contract.takes_idempotency_key(method)
        response_class = message_factory.GetMessageClass(method.output_type)
        inner: Behavior = handler.unary_unary  # type: ignore[assignment]
        handled = metrics.grpc_server().handled
        handling = metrics.grpc_server().handling.labels(service, name, "unary")

        async def run(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            key = context.idempotency_key.get()
            if not (records_key and key):
                return await inner(request, ctx)
            assert self._pool is not None
            return await idempotency.once(
                self._pool, full_method, key, request, response_class, lambda: inner(request, ctx)
            )

        async def behavior(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self._draining:
                self._last_refusal = time.monotonic()
                await ctx.abort(grpc.StatusCode.UNAVAILABLE, "shutting down; retry")
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            failure: ServiceError | None = None
            self._inflight += 1
            self._idle.clear()
            try:
                md = {k: v for k, v in ctx.invocation_metadata() or () if isinstance(v, str)}
                context.request_id.set(context.valid_request_id(md.get("x-request-id")))
                ident = _canonical(await self._authenticate(md, scope))
                if not ident.allows(scope):
                    raise permission_denied(f"this call needs scope {scope}")
                context.identity.set(ident)
                context.identity_token.set(md.get(auth.METADATA_KEY))
                context.idempotency_key.set(md.get(idempotency.METADATA_KEY))
                if isinstance(request, _Undecodable):
                    raise Invalid([("", f"not a valid {method.input_type.name}: {request.reason}")])
                violations = check_limits(request)
                if violations:
                    raise Invalid(violations)
                for attempt in range(1, _DEADLOCK_ATTEMPTS + 1):
                    try:
                        return await run(request, ctx)
                    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                        # The victim's transaction was rolled back whole: running the call
                        # again is safe. After a few tries the caller gets ABORTED.
                        if attempt == _DEADLOCK_ATTEMPTS:
                            raise
            except grpc.aio.AbortError:
                code = ctx.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:  # every failure leaves as a status, never a trace
                failure = status_of(exc)
                code = failure.code
            finally:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.set()
                handled.labels(service, name, "unary", code.name).inc()
                handling.observe(time.perf_counter() - started)
            assert failure is not None
            await ctx.abort_with_status(failure.to_status())

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


async def _refuse_undeclared(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> None:
    await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "this method is not part of the contract")


def build_server(
    authenticate: Authenticate, pool: db.Pool | None
) -> tuple[grpc.aio.Server, ChassisInterceptor]:
    tracing = aio_server_interceptor(
        filter_=filters.negate(filters.service_name(health.SERVICE_NAME))
    )
    chassis = ChassisInterceptor(authenticate, pool)
    server = grpc.aio.server(
        interceptors=[tracing, chassis],
        options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)],
    )
    return server, chassis


def add_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def add_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Server reflection, after checking that every served RPC is guarded.

    Reflection answers under v1alpha and v1: grpcio-reflection implements only v1alpha, whose
    messages are the same on the wire as v1's, so its servicer also serves the v1 name.
    """
    pool = descriptor_pool.Default()
    for name in service_names:
        contract.check_service(pool.FindServiceByName(name))
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1]
    reflecting = reflection.aio.ReflectionServicer(names, pool=pool)
    for service_name in (reflection.SERVICE_NAME, REFLECTION_V1):
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    service_name,
                    {
                        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                            reflecting.ServerReflectionInfo,
                            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                        )
                    },
                )
            ]
        )


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
