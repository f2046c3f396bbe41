"""Errors and their gRPC form: a status code, a message and structured details.

Domain code raises the small hierarchy below (Invalid, NotFound, StaleEtag, Duplicate, Conflict,
FailedPrecondition, Unavailable); the chassis interceptor turns any ServiceError into a rich
gRPC status (google.rpc.Status with BadRequest field violations, or a PreconditionFailure of
type ETAG for a stale etag), which the gateway turns into problem+json naming the fields.
Nothing else about an error crosses the wire.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

Violation = tuple[str, str]

# The PreconditionFailure type that tells a stale etag (HTTP 412) from other failed
# preconditions (HTTP 409) without matching on message texts.
ETAG_PRECONDITION = "ETAG"


class ServiceError(Exception):
    """An error with its gRPC status code; what the caller sees is `message` and the details."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: Sequence[Violation] = (),
        preconditions: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = list(violations)
        # (type, subject, description) of google.rpc.PreconditionFailure.Violation
        self.preconditions = list(preconditions)

    @property
    def is_stale_etag(self) -> bool:
        return any(kind == ETAG_PRECONDITION for kind, _, _ in self.preconditions)

    def to_status(self) -> grpc.Status:
        details: list[Message] = []
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=m)
                        for f, m in self.violations
                    ]
                )
            )
        if self.preconditions:
            details.append(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=t, subject=s, description=d
                        )
                        for t, s, d in self.preconditions
                    ]
                )
            )
        packed = []
        for detail in details:
            wrapper = any_pb2.Any()
            wrapper.Pack(detail)
            packed.append(wrapper)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        return rpc_status.to_status(status)


class Invalid(ServiceError):
    """INVALID_ARGUMENT naming every offending field by its request path."""

    def __init__(self, violations: Sequence[Violation], message: str = "") -> None:
        summary = message or "; ".join(f"{f}: {m}" for f, m in violations[:3])
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, summary, violations)


def invalid_field(field: str, message: str) -> Invalid:
    return Invalid([(field, message)])


class NotFound(ServiceError):
    """NOT_FOUND: also the answer for another tenant's id, so tenants cannot detect each other."""

    def __init__(self, kind: str, record_id: str) -> None:
        super().__init__(grpc.StatusCode.NOT_FOUND, f"{kind} {record_id} not found")
        self.kind = kind
        self.record_id = record_id


class StaleEtag(ServiceError):
    """FAILED_PRECONDITION of type ETAG: the record changed since the etag the caller holds."""

    def __init__(self, kind: str) -> None:
        text = f"the {kind} has changed since the given etag; read it again and retry"
        super().__init__(
            grpc.StatusCode.FAILED_PRECONDITION,
            text,
            preconditions=[(ETAG_PRECONDITION, kind, text)],
        )


def check_etag(kind: str, stored: str, sent: str) -> None:
    """A write that sends an etag goes ahead only while the record still has it; one that
    sends none goes ahead regardless (AIP-154)."""
    if sent and sent != stored:
        raise StaleEtag(kind)


class Duplicate(ServiceError):
    """ALREADY_EXISTS: a unique value is taken; `field` names it when a field holds it."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(
            grpc.StatusCode.ALREADY_EXISTS, message, [(field, message)] if field else []
        )


class Conflict(ServiceError):
    """ABORTED: a concurrent change got in the way; the whole call may be retried."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.ABORTED, message)


class FailedPrecondition(ServiceError):
    """FAILED_PRECONDITION: the record is not in a state that allows this (HTTP 409)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(
            grpc.StatusCode.FAILED_PRECONDITION, message, [(field, message)] if field else []
        )


class Unavailable(ServiceError):
    """UNAVAILABLE: a dependency is down; the same call may succeed later."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)


def unauthenticated(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, message)


def permission_denied(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, message)


def from_rpc_error(err: grpc.aio.AioRpcError) -> ServiceError:
    """A backend's error as this process's own: its code, text and structured details."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    violations: list[Violation] = []
    preconditions: list[tuple[str, str, str]] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            preconditions.extend((v.type, v.subject, v.description) for v in failure.violations)
    return ServiceError(err.code(), err.details() or "", violations, preconditions)


def violations_of(err: grpc.aio.AioRpcError) -> list[Violation]:
    """The BadRequest field violations a service attached to an error, if any."""
    return from_rpc_error(err).violations
