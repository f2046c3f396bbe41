"""The REST/JSON front end: authenticate, limit, transcode to the RPC, answer in JSON or problem+json.

Routes come from the protos' google.api.http annotations (routes.py); nothing here knows a
resource by name, so a new annotated RPC is published without touching this file.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, request_response
from starlette.routing import Route as HttpRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from crmkit import context, metrics
from crmkit.context import Identity
from crmkit.errors import ServiceError
from crmkit.limits import check_limits
from trellis_gateway import asyncapi, docs, idempotency
from trellis_gateway.apikeys import KeyVerifier
from trellis_gateway.dispatch import Dispatcher
from trellis_gateway.problems import from_service_error, problem
from trellis_gateway.ratelimit import Decision, RateLimiter
from trellis_gateway.routes import (
    RequestError,
    Route,
    RouteTable,
    build_request,
    message_to_json,
    success_status,
)

log = logging.getLogger("trellis_gateway.access")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_FIXED_ROUTES = frozenset({"/healthz", "/readyz", "/v1/openapi.json", docs.ASYNCAPI_URL, "/docs"})
_MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})


class RequestContext:
    """Pure ASGI middleware: request id in and out, RED metrics and one access-log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
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

        identity = await self.verifier.verify_authorization(
            request.headers.get("authorization", "")
        )
        if identity is None:
            return problem(
                401,
                "send a valid API key as 'Authorization: Bearer <key>'",
                rid,
                headers={"WWW-Authenticate": "Bearer"},
            )
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

    async def _handle(
        self, request: Request, route: Route, params: dict[str, str], identity: Identity, rid: str
    ) -> Response:
        body = await self.read_body(request, rid)
        if isinstance(body, Response):
            return body
        key = request.headers.get("idempotency-key")
        if key is None or request.method != "POST":
            return await self._call(request, route, params, body, identity, rid)
        if not 1 <= len(key) <= idempotency.MAX_KEY_LENGTH:
            return problem(
                400,
                "bad Idempotency-Key",
                rid,
                [("Idempotency-Key", f"1 to {idempotency.MAX_KEY_LENGTH} characters")],
            )
        fingerprint = idempotency.request_hash(
            request.method, request.url.path, request.url.query, body
        )
        claim = await self.idempotency.claim(identity.tenant_id, key, fingerprint)
        if claim.outcome is idempotency.Outcome.MISMATCH:
            return problem(422, "this Idempotency-Key was used with another request", rid)
        if claim.outcome is idempotency.Outcome.IN_PROGRESS:
            return problem(409, "a request with this Idempotency-Key is still running", rid)
        if claim.outcome is idempotency.Outcome.REPLAY:
            return Response(
                claim.body,
                status_code=claim.status,
                headers={**(claim.headers or {}), "Idempotent-Replayed": "true"},
            )
        try:
            response = await self._call(request, route, params, body, identity, rid)
        except BaseException:
            await self.idempotency.release(identity.tenant_id, key)
            raise
        if response.status_code >= 500 or response.status_code == 429:
            await self.idempotency.release(identity.tenant_id, key)
        else:
            stored = {
                k: v
                for k, v in response.headers.items()
                if k in ("content-type", "etag", "location")
            }
            await self.idempotency.complete(
                identity.tenant_id, key, response.status_code, bytes(response.body), stored
            )
        return response

    async def _call(
        self,
        request: Request,
        route: Route,
        params: dict[str, str],
        body: bytes,
        identity: Identity,
        rid: str,
    ) -> Response:
        try:
            payload = json.loads(body) if body.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return problem(
                400, f"the body is not valid JSON: {exc}", rid, [("body", "invalid JSON")]
            )
        if route.body and payload is None and request.method in _MUTATING:
            return problem(400, "this call needs a JSON body", rid, [("body", "required")])
        try:
            message, _ = build_request(route, params, _query_lists(request), payload)
        except RequestError as exc:
            return problem(400, exc.message, rid, [(exc.field, exc.message)])
        _apply_if_match(message, request.headers.get("if-match"))
        violations = check_limits(message)
        if violations:
            return problem(400, "; ".join(m for _, m in violations[:3]), rid, violations)
        try:
            result = await self.dispatcher.call(
                route.full_method, message, route.response_class, identity, rid
            )
        except ServiceError as err:
            return from_service_error(err, rid)
        return _render(route, result)

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
        if await self.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503)

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
    logging.getLogger(__name__).error("unhandled error", exc_info=exc)
    return problem(500, "internal error", request.state.request_id)


def _query_lists(request: Request) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        query.setdefault(key, []).append(value)
    return query


def _apply_if_match(message: Message, if_match: str | None) -> None:
    """If-Match travels as the request's `etag` field, which the service compares."""
    if if_match and "etag" in message.DESCRIPTOR.fields_by_name:
        message.etag = if_match.strip().removeprefix("W/").strip('"')  # type: ignore[attr-defined]


def _render(route: Route, result: Message) -> Response:
    status = success_status(route)
    if status == 204:
        return Response(status_code=204)
    headers = {}
    etag = getattr(result, "etag", "") if "etag" in result.DESCRIPTOR.fields_by_name else ""
    if etag:
        headers["ETag"] = f'"{etag}"'
    return JSONResponse(message_to_json(result), status_code=status, headers=headers)


def _rate_headers(decision: Decision) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_seconds),
    }
