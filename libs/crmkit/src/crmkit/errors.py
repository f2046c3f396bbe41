"""Domain errors and their gRPC form: a status code, a message and BadRequest field violations.

Services raise ServiceError; the server interceptor turns it into a rich gRPC status
(google.rpc.Status with google.rpc.BadRequest details), which the gateway turns into
problem+json naming the fields. Nothing else about an error crosses the wire.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class ServiceError(Exception):
    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = list(violations)

    def to_status(self) -> grpc.Status:
        details = []
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=m)
                    for f, m in self.violations
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=details)
        return rpc_status.to_status(status)


def invalid(violations: Sequence[tuple[str, str]], message: str = "") -> ServiceError:
    summary = message or "; ".join(f"{f}: {m}" for f, m in violations[:3])
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, summary, violations)


def invalid_field(field: str, message: str) -> ServiceError:
    return invalid([(field, message)])


def not_found(kind: str, record_id: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, f"{kind} {record_id} not found")


def already_exists(message: str, field: str = "") -> ServiceError:
    return ServiceError(
        grpc.StatusCode.ALREADY_EXISTS, message, [(field, message)] if field else []
    )


def stale_etag(kind: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"the {kind} has changed since the etag given in If-Match; get it again and retry",
    )


def unauthenticated(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, message)


def permission_denied(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, message)


def violations_of(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations a service attached to an error, if any."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return []
    found: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found


__all__ = [
    "ServiceError",
    "already_exists",
    "invalid",
    "invalid_field",
    "not_found",
    "permission_denied",
    "stale_etag",
    "unauthenticated",
    "violations_of",
]
