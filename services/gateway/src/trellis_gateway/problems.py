"""problem+json (RFC 9457) responses, and the gRPC status -> HTTP status mapping of DESIGN.md §2."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc
from starlette.responses import Response

from crmkit.errors import ServiceError

PROBLEM_TYPE_BASE = "https://trellis.dev/problems/"

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
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
    422: "Idempotency key reused",
    429: "Too many requests",
    499: "Request cancelled",
    500: "Internal error",
    501: "Not implemented",
    503: "Service unavailable",
    504: "Upstream timeout",
}


def problem(
    status: int,
    detail: str,
    request_id: str,
    errors: Sequence[tuple[str, str]] = (),
    headers: dict[str, str] | None = None,
) -> Response:
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
    return Response(
        json.dumps(body),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def from_service_error(err: ServiceError, request_id: str) -> Response:
    status = HTTP_STATUS.get(err.code, 500)
    # An internal failure's text stays in our logs; the caller gets the request id to quote.
    detail = err.message if status < 500 or status in (503, 504) else "internal error"
    return problem(status, detail, request_id, err.violations)
