"""problem+json (RFC 9457) responses, and the gRPC status -> HTTP status mapping of DESIGN.md §2."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc
from starlette.responses import Response

from crmkit import idempotency
from crmkit.errors import ServiceError
from trellis_gateway.dispatch import BadGateway

PROBLEM_TYPE_BASE = "https://trellis.dev/problems/"
# What a 503 or 429 from a backend asks the caller to wait: both are brief by nature (a
# restart, a burst), and the caller backs off further on its own.
RETRY_AFTER_SECONDS = 2

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

_TITLES = {
    400: "Invalid request",
    401: "Authentication required",
    403: "Permission denied",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Request too large",
    415: "Unsupported media type",
    431: "Request header fields too large",
    422: "Idempotency key reused",
    429: "Too many requests",
    499: "Request cancelled",
    500: "Internal error",
    501: "Not implemented",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Upstream timeout",
}


def problem_json(
    status: int, detail: str, request_id: str, errors: Sequence[tuple[str, str]] = ()
) -> bytes:
    title = _TITLES.get(status, "Error")
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
    if errors:
        body["errors"] = [{"field": f, "message": m} for f, m in errors]
    return json.dumps(body).encode()


def problem(
    status: int,
    detail: str,
    request_id: str,
    errors: Sequence[tuple[str, str]] = (),
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        problem_json(status, detail, request_id, errors),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def http_status(err: ServiceError) -> int:
    """The HTTP status of a failed call: by its code, and for a failed precondition by the
    kind the service named in its PreconditionFailure details (never by the message text)."""
    if isinstance(err, BadGateway):
        return 502
    if err.code == grpc.StatusCode.FAILED_PRECONDITION:
        kinds = {kind for kind, _, _ in err.preconditions}
        if err.is_stale_etag:
            return 412
        if idempotency.KEY_REUSED in kinds:
            return 422
        return 409
    return HTTP_STATUS.get(err.code, 500)


def from_service_error(err: ServiceError, request_id: str) -> Response:
    status = http_status(err)
    # An internal failure's text stays in our logs; the caller gets the request id to quote.
    detail = err.message if status < 500 or status in (502, 503, 504) else "internal error"
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in (429, 503) else None
    return problem(status, detail, request_id, err.violations, headers)
