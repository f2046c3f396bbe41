"""The REST/JSON front end: authenticate, limit, transcode to the RPC, answer in JSON or problem+json.

Routes come from the protos' google.api.http annotations (routes.py); nothing here knows a
resource by name, so a new annotated RPC is published without touching this file.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import grpc
import psycopg
import psycopg_pool
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import TracerProvider
from opentelemetry.util.http import sanitize_method
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, request_response
from starlette.routing import Route as HttpRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from crmkit import context, contract, metrics
from crmkit.context import Identity
from crmkit.errors import ServiceError
from crmkit.grpc_server import status_of
from crmkit.limits import check_limits
from trellis_gateway import asyncapi, docs, idempotency
from trellis_gateway.apikeys import KeyVerifier
from trellis_gateway.dispatch import Dispatcher
from trellis_gateway.problems import RETRY_AFTER_SECONDS, from_service_error, problem
from trellis_gateway.ratelimit import Decision, RateLimiter
from trellis_gateway.routes import (
    IF_MATCH,
    RequestError,
    Route,
    RouteTable,
    build_request,
    message_to_json,
    success_status,
)

log = logging.getLogger("trellis_gateway.access")
_log = logging.getLogger(__name__)

_FIXED_ROUTES = frozenset({"/healthz", "/readyz", "/v1/openapi.json", docs.ASYNCAPI_URL, "/docs"})
_MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})
# Deeper JSON than any request message needs; json and json_format recurse, so an unbounded
# depth would end in a RecursionError (a 500) instead of a 400.
MAX_JSON_DEPTH = 64
_ANY = "*"  # If-Match: * -- any current representation


class RequestContext:
    """Pure ASGI middleware: request id in and out, RED metrics and one access-log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = context.valid_request_id(given)
        context.request_id.set(rid)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: AsgiMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = state.get("route") or (
                scope["path"] if scope["path"] in _FIXED_ROUTES else "unmatched"
            )
            elapsed = time.perf_counter() - started
            metrics.http_server().labels(scope["method"], route, str(status)).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )


def span_details(scope: Scope) -> tuple[str, dict[str, str]]:
    """The server span's first name: the method alone (the path would make a name per id)
    until the route is known; Gateway.api then names it after the route template."""
    method = sanitize_method(scope.get("method", "")).replace("_OTHER", "HTTP")
    path = scope.get("path", "")
    if path in _FIXED_ROUTES:
        return f"{method} {path}", {"http.route": path}
    return method, {}


def asgi(gateway: Gateway, tracer_provider: TracerProvider | None = None) -> ASGIApp:
    """The gateway's HTTP stack: request context, one server span per request, the app."""
    return RequestContext(
        OpenTelemetryMiddleware(
            gateway.app(),
            excluded_urls="healthz,readyz,metrics",
            default_span_details=span_details,
            # One span per request is the useful part; a span per ASGI message costs more
            # CPU than the rest of the request's handling and says little.
            exclude_spans=["receive", "send"],
            tracer_provider=tracer_provider,
        )
    )


@dataclass
class _Answer:
    response: Response
    result: Message | None = None  # the RPC's response, when the call succeeded


@dataclass
class Gateway:
    routes: RouteTable
    dispatcher: Dispatcher
    verifier: KeyVerifier
    limiter: RateLimiter
    idempotency: idempotency.IdempotencyStore
    openapi: dict[str, Any]
    max_body_bytes: int
    ready: Callable[[], Awaitable[bool]]
    asyncapi: dict[str, Any] = field(default_factory=asyncapi.build_asyncapi)
    # Each backend's health as its own health service reports it, for /readyz to show.
    backends: Callable[[], Mapping[str, str]] = dict

    async def read_body(self, request: Request, rid: str) -> bytes | Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return problem(413, f"the body is larger than {self.max_body_bytes} bytes", rid)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                return problem(413, f"the body is larger than {self.max_body_bytes} bytes", rid)
        return bytes(body)

    async def api(self, request: Request) -> Response:
        rid: str = request.state.request_id
        # Match on the raw path: an id may hold an encoded "/" or ":".
        path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
        found = self.routes.match(request.method, path)
        if found is None:
            allowed = self.routes.allowed_methods(path)
            if allowed:
                return problem(
                    405, f"use {', '.join(allowed)}", rid, headers={"Allow": ", ".join(allowed)}
                )
            return problem(404, f"no resource at {request.url.path}", rid)
        route, params = found
        request.state.route = route.path_template
        span = trace.get_current_span()
        span.update_name(f"{request.method} {route.path_template}")
        span.set_attribute("http.route", route.path_template)
        try:
            return await self._authorized(request, route, params, rid)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            # The gateway's own database (keys, idempotency, tenants) failed: unavailable
            # is a 503 the caller may retry, never a 500.
            return from_service_error(status_of(exc), rid)

    async def _authorized(
        self, request: Request, route: Route, params: dict[str, str], rid: str
    ) -> Response:
        identity = await self._authenticate(request, rid)
        if isinstance(identity, Response):
            return identity
        context.identity.set(identity)
        if not identity.allows(route.required_scope):
            return problem(403, f"this API key lacks the scope {route.required_scope}", rid)
        decision, which = self.limiter.check(identity.principal, identity.tenant_id)
        limit_headers = _rate_headers(decision)
        if not decision.allowed:
            metrics.rate_limited().labels(which).inc()
            return problem(
                429,
                f"the {which} rate limit is exhausted",
                rid,
                headers={**limit_headers, "Retry-After": str(decision.retry_after)},
            )
        response = await self._handle(request, route, params, identity, rid)
        response.headers.update(limit_headers)
        return response

    async def _authenticate(self, request: Request, rid: str) -> Identity | Response:
        header = request.headers.get("authorization", "")
        # The TCP peer, or the client a trusted proxy names (uvicorn's proxy headers).
        host = request.client.host if request.client else ""
        budget = self.limiter.failures_left(host)
        if budget.allowed:
            identity = await self.verifier.verify_authorization(header)
        else:
            # An address that keeps failing gets no more key lookups (each unknown key id
            # costs one): only a key already verified here still passes.
            identity = self.verifier.cached_authorization(header)
            if identity is None:
                metrics.rate_limited().labels("address").inc()
                return problem(
                    429,
                    "too many failed authentications from this address",
                    rid,
                    headers={"Retry-After": str(budget.retry_after)},
                )
        if identity is None:
            self.limiter.failed(host)
            return problem(
                401,
                "send a valid API key as 'Authorization: Bearer <key>'",
                rid,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return identity

    async def _handle(
        self, request: Request, route: Route, params: dict[str, str], identity: Identity, rid: str
    ) -> Response:
        body = await self.read_body(request, rid)
        if isinstance(body, Response):
            return body
        key = request.headers.get("idempotency-key")
        if key is None or request.method != "POST":
            return (await self._call(request, route, params, body, identity, rid)).response
        if not (
            1 <= len(key) <= idempotency.MAX_KEY_LENGTH and key.isascii() and key.isprintable()
        ):
            return problem(
                400,
                "bad Idempotency-Key",
                rid,
                [
                    (
                        "Idempotency-Key",
                        f"1 to {idempotency.MAX_KEY_LENGTH} printable ASCII characters",
                    )
                ],
            )
        fingerprint = idempotency.request_hash(
            request.method, request.url.path, request.url.query, body
        )
        claim = await self.idempotency.claim(identity, key, fingerprint)
        if claim.outcome is idempotency.Outcome.MISMATCH:
            return problem(422, "this Idempotency-Key was used with another request", rid)
        if claim.outcome is idempotency.Outcome.IN_PROGRESS:
            return problem(409, "a request with this Idempotency-Key is still running", rid)
        if claim.outcome is idempotency.Outcome.REPLAY:
            return _replay(claim, rid)
        assert claim.token is not None
        try:
            answer = await self._call(request, route, params, body, identity, rid, key)
        except BaseException:
            await self._let_go(identity, key, claim.token)
            raise
        response = answer.response
        if response.status_code >= 500 or response.status_code == 429:
            await self._let_go(identity, key, claim.token)
            return response
        withhold = answer.result is not None and contract.carries_secret(answer.result)
        kept = _WITHHELD_HEADERS if withhold else _REPLAYED_HEADERS
        try:
            await self.idempotency.complete(
                identity,
                key,
                claim.token,
                response.status_code,
                None if withhold else bytes(response.body),
                {k: v for k, v in response.headers.items() if k in kept},
            )
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            # The call is done and its answer is the caller's; the claim's lease lapses and
            # a retry is answered by the owning service, which recorded the key.
            _log.warning("idempotency answer not stored", extra={"error": type(exc).__name__})
        return response

    async def _let_go(self, identity: Identity, key: str, token: uuid.UUID) -> None:
        try:
            await self.idempotency.release(identity, key, token)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            # The claim stays until its lease lapses; then a retry takes it over.
            _log.warning("idempotency key not released", extra={"error": type(exc).__name__})

    async def _call(
        self,
        request: Request,
        route: Route,
        params: dict[str, str],
        body: bytes,
        identity: Identity,
        rid: str,
        idempotency_key: str = "",
    ) -> _Answer:
        if body.strip() and not _is_json(request.headers.get("content-type", "")):
            return _Answer(
                problem(
                    415,
                    "send the body as application/json",
                    rid,
                    [("Content-Type", "expected application/json")],
                )
            )
        try:
            payload = _parse_json(body)
            if route.body and payload is None and request.method in _MUTATING:
                raise RequestError("body", "required: this call needs a JSON body")
            message, _ = build_request(route, params, _query_lists(request), payload)
            condition = _if_match(request) if request.method in _MUTATING else ""
        except RequestError as exc:
            return _Answer(problem(400, exc.message, rid, [(exc.field, exc.message)]))
        has_etag = "etag" in message.DESCRIPTOR.fields_by_name
        if condition not in ("", _ANY):
            if not has_etag:
                return _Answer(problem(412, "this resource has no entity tag to match", rid))
            message.etag = condition  # type: ignore[attr-defined]  # the service compares it
        violations = check_limits(message)
        if violations:
            return _Answer(problem(400, "; ".join(m for _, m in violations[:3]), rid, violations))
        try:
            result = await self.dispatcher.call(
                route.full_method,
                message,
                route.response_class,
                identity,
                rid,
                idempotency_key=idempotency_key,
            )
        except ServiceError as err:
            if condition == _ANY and err.code == grpc.StatusCode.NOT_FOUND:
                # RFC 9110 13.1.1: "*" is false when there is no current representation.
                return _Answer(problem(412, "If-Match: * and there is no such resource", rid))
            return _Answer(from_service_error(err, rid))
        path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
        return _Answer(_render(route, result, path), result)

    async def openapi_json(self, _: Request) -> Response:
        return JSONResponse(self.openapi)

    async def asyncapi_json(self, _: Request) -> Response:
        return JSONResponse(self.asyncapi)

    async def docs_page(self, _: Request) -> Response:
        return HTMLResponse(docs.page(self.openapi), headers={"Content-Security-Policy": docs.CSP})

    async def docs_asset(self, request: Request) -> Response:
        request.state.route = docs.PREFIX + "{asset}"
        found = docs.asset(request.path_params["asset"])
        if found is None:
            return problem(404, f"no resource at {request.url.path}", request.state.request_id)
        content, media_type = found
        if isinstance(content, str):
            return Response(content, media_type=media_type)
        return FileResponse(content, media_type=media_type)

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _: Request) -> Response:
        # Ready means the gateway itself can serve: its database answers and it is not
        # shutting down. A backend that is down is listed but does not make the gateway
        # unready: its routes answer 503 on their own while every other backend's keep
        # working, and since every replica sees the same backend, taking them all out of
        # the load balancer would turn one service's outage into the whole API's.
        backends = dict(self.backends())
        if await self.ready():
            return JSONResponse({"status": "ready", "backends": backends})
        return JSONResponse(
            {"status": "not ready", "backends": backends},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    def app(self) -> Starlette:
        app = Starlette(
            exception_handlers={HTTPException: _http_problem, Exception: _internal_problem},
            routes=[
                HttpRoute("/healthz", self.healthz, methods=["GET"]),
                HttpRoute("/readyz", self.readyz, methods=["GET"]),
                HttpRoute("/v1/openapi.json", self.openapi_json, methods=["GET"]),
                HttpRoute(docs.ASYNCAPI_URL, self.asyncapi_json, methods=["GET"]),
                HttpRoute("/docs", self.docs_page, methods=["GET"]),
                HttpRoute(docs.PREFIX + "{asset}", self.docs_asset, methods=["GET"]),
                # A Mount passes every method on: the route table, not Starlette, answers
                # 405 and its Allow header.
                Mount("/v1", request_response(self.api)),
            ],
        )
        return app


async def _http_problem(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (an HTTP method no route knows) as problem+json too."""
    assert isinstance(exc, HTTPException)
    return problem(
        exc.status_code, str(exc.detail), request.state.request_id, headers=dict(exc.headers or {})
    )


async def _internal_problem(request: Request, exc: Exception) -> Response:
    _log.error("unhandled error", exc_info=exc)
    return problem(500, "internal error", request.state.request_id)


_REPLAYED_HEADERS = frozenset({"content-type", "etag", "location"})
# An answer withheld for its secret is replayed as a problem saying where the resource is.
_WITHHELD_HEADERS = frozenset({"location"})


def _query_lists(request: Request) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        query.setdefault(key, []).append(value)
    return query


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _parse_json(body: bytes) -> Any:
    """The body's JSON (None when empty), no deeper than MAX_JSON_DEPTH."""
    if not body.strip():
        return None
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError("body", f"invalid JSON: {exc}") from None
    except RecursionError:
        payload = None  # deeper than the parser goes, so deeper than the bound
    else:
        if _depth_within(payload, MAX_JSON_DEPTH):
            return payload
    raise RequestError("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def _depth_within(value: Any, limit: int) -> bool:
    # Iterative: a recursive walk would fail on exactly the input it is meant to refuse.
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return False
                stack.append((child, depth + 1))
    return True


def _if_match(request: Request) -> str:
    """The If-Match condition: "" (none), "*" (any current representation) or the one entity
    tag to compare, which travels as the request's `etag` field for the service to compare."""
    value = request.headers.get("if-match")
    if value is None:
        return ""
    if value.strip() == _ANY:
        return _ANY
    if not IF_MATCH.fullmatch(value):  # an empty If-Match is no entity tag either
        raise RequestError("If-Match", "send one entity tag, or *")
    return value.strip().removeprefix("W/").strip('"')


def _render(route: Route, result: Message, path: str) -> Response:
    status = success_status(route)
    if status == 204:
        return Response(status_code=204)
    headers = {}
    fields = result.DESCRIPTOR.fields_by_name
    etag = getattr(result, "etag", "") if "etag" in fields else ""
    if etag:
        headers["ETag"] = f'"{etag}"'
    created_id = getattr(result, "id", "") if "id" in fields else ""
    if status == 201 and created_id:
        # The collection the resource was created in, then its id (AIP-122 resource names).
        headers["Location"] = f"{path.rstrip('/')}/{quote(created_id, safe='')}"
    return JSONResponse(message_to_json(result), status_code=status, headers=headers)


def _replay(claim: idempotency.Claim, rid: str) -> Response:
    if claim.withheld:
        return problem(
            409,
            "this request already succeeded, but its response held a secret, which is shown"
            " only once and never stored; if it was lost, revoke the resource at the Location"
            " given and create another",
            rid,
            headers={**claim.headers, "Idempotent-Replayed": "true"},
        )
    return Response(
        claim.body,
        status_code=claim.status,
        headers={**claim.headers, "Idempotent-Replayed": "true"},
    )


def _rate_headers(decision: Decision) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_seconds),
    }
