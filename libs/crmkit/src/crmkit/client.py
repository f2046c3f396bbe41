"""Calls to another service, with the platform's rules for calls (DESIGN.md §2).

Every call carries a deadline; the channel retries a transient failure only where the
callee's contract says a repeat cannot do anything twice (`idempotency_level`); a service
acts on behalf of the caller it is serving by sending that caller's identity token onward
(it holds no key that could speak for anyone else), with the request id, and with an
idempotency key of its own choosing for writes, so its own retries never write twice. Work
no caller asked for (a scheduled campaign) is done as the service itself: with its own key,
as principal `service:<name>` in one tenant, within the scopes its public key allows.
Failures come back as this process's ServiceErrors: the callee's status and details, or
UNAVAILABLE naming the callee when it could not be reached.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from crmkit import auth, context, contract, idempotency, telemetry
from crmkit.errors import ServiceError, Unavailable, from_rpc_error

R = TypeVar("R", bound=Message)

_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def service_config(services: Iterable[ServiceDescriptor]) -> str:
    """The channel's retry policy: transient failures of retry-safe methods only."""
    retry = {
        "maxAttempts": 3,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    names = [
        {"service": s.full_name, "method": m.name}
        for s in services
        for m in s.methods
        if contract.retry_safe(m)
    ]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": retry}]})


# gRPC waits up to 120 s between attempts to reach a peer that is down; a peer that restarts
# (a rollout, a crash) would then stay unreachable long after it is back. Five seconds at most.
RECONNECT_OPTIONS = [("grpc.max_reconnect_backoff_ms", 5000)]


def call_metadata(
    token: str, request_id: str, idempotency_key: str, traced: bool
) -> list[tuple[str, Any]]:
    """What a call to another service carries: the identity token, the request id, the
    idempotency key of a write, and the trace context where no client interceptor sends it
    (`traced`: the channel has one)."""
    metadata: list[tuple[str, Any]] = [(auth.METADATA_KEY, token), ("x-request-id", request_id)]
    if idempotency_key:
        # The callee records it with the write: a retry after a lost answer returns the
        # first result instead of writing twice.
        metadata.append((idempotency.METADATA_KEY, idempotency_key))
    if not traced:
        carrier: dict[str, str] = {}
        telemetry.inject_into(carrier)
        metadata.extend(carrier.items())
    return metadata


def channel(services: Iterable[ServiceDescriptor], address: str) -> grpc.aio.Channel:
    """A channel with the contract's retry policy, and a client span per call when spans are
    recorded (without them, Callee.call passes the trace context on itself)."""
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.service_config", service_config(services)),
            ("grpc.enable_retries", 1),
            *RECONNECT_OPTIONS,
        ],
        interceptors=aio_client_interceptors() if telemetry.recording() else None,
    )


class Callee:
    """Another service of the platform, called on behalf of the current caller, or as this
    service itself when it has a key of its own (`own_key`)."""

    def __init__(
        self, domain: str, address: str, timeout: float, own_key: auth.SigningKey | None = None
    ) -> None:
        self.domain = domain
        self.channel = channel(contract.services_of_domain(domain), address)
        self._traced = telemetry.recording()
        self._timeout = timeout
        self._own_key = own_key
        # Signed once per tenant and scopes for half a token's life, not once per call.
        self._own_tokens = auth.TokenCache(own_key) if own_key is not None else None

    def as_itself(self, tenant_id: str, scopes: Iterable[str]) -> str:
        """An identity token of this service in `tenant_id` (for `call(..., token=)`)."""
        if self._own_key is None or self._own_tokens is None:
            raise RuntimeError("this service has no key of its own to call as itself")
        ident = context.Identity(tenant_id, f"service:{self._own_key.issuer}", frozenset(scopes))
        return self._own_tokens.token(ident)

    async def call(
        self,
        method: Callable[..., Awaitable[R]],
        request: Message,
        *,
        idempotency_key: str = "",
        token: str | None = None,
    ) -> R:
        """`method` (a stub's bound method) with the current caller's identity and request id.

        `idempotency_key` makes a write safe to repeat: choose one that names the effect
        (e.g. "lead-convert:<lead id>"), so the caller's retries and this service's alike
        find the first result. `token` (from `as_itself`) calls as this service instead.
        """
        token = token or context.identity_token.get()
        if not token:  # only reachable from code that is not serving a call
            raise RuntimeError("no caller to act on behalf of")
        metadata = call_metadata(
            token, context.request_id.get() or "", idempotency_key, self._traced
        )
        try:
            return await method(request, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() in _UNREACHABLE:
                raise Unavailable(
                    f"the {self.domain} service is unavailable; retry later"
                ) from None
            failure: ServiceError = from_rpc_error(err)
            raise failure from None

    async def close(self) -> None:
        await self.channel.close()
