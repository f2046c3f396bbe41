"""One way to call any RPC the gateway publishes, whoever implements it.

REST and gRPC callers both end here: a call names the RPC by its gRPC path and carries the
verified identity. Backend services are reached over gRPC with the signed internal token;
the gateway's own services (tenants, API keys) are plain async functions in this process.
Either way failures come back as ServiceError, so both front ends map errors one way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from crmkit import auth, contract, idempotency
from crmkit.context import Identity
from crmkit.errors import ServiceError, from_rpc_error

LocalHandler = Callable[[Message, Identity], Awaitable[Message]]

log = logging.getLogger(__name__)

_TRANSPORT_FAILURES = {
    grpc.StatusCode.UNAVAILABLE: "the service is unavailable; retry later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the service did not answer in time; retry later",
    grpc.StatusCode.UNKNOWN: "internal error",
}


def _service_config(services: Iterable[ServiceDescriptor]) -> str:
    """The channel's retry policy: a transient failure is retried only where the contract
    says a repeat cannot do anything twice (idempotency_level); the caller retries the rest,
    with an Idempotency-Key."""
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


@dataclass(frozen=True)
class Backend:
    name: str
    channel: grpc.aio.Channel
    tokens: auth.TokenCache
    timeout: float


class Dispatcher:
    def __init__(self) -> None:
        self._local: dict[str, LocalHandler] = {}
        self._remote: dict[str, Backend] = {}
        self.backends: list[Backend] = []

    def add_local(self, handlers: Mapping[str, LocalHandler]) -> None:
        self._local.update(handlers)

    def add_backend(
        self,
        name: str,
        services: list[ServiceDescriptor],
        address: str,
        tokens: auth.TokenCache,
        timeout: float,
    ) -> None:
        channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.service_config", _service_config(services)),
                ("grpc.enable_retries", 1),
            ],
            interceptors=aio_client_interceptors(),
        )
        backend = Backend(name, channel, tokens, timeout)
        self.backends.append(backend)
        for service in services:
            for method in service.methods:
                self._remote[f"/{service.full_name}/{method.name}"] = backend

    def check(self, full_methods: Iterable[str]) -> None:
        """Refuse to start when a published RPC has nobody to answer it (fail closed)."""
        missing = sorted(m for m in full_methods if m not in self._local and m not in self._remote)
        if missing:
            raise contract.ContractError(f"published RPCs without a handler: {', '.join(missing)}")

    async def call(
        self,
        full_method: str,
        request: Message,
        response_class: type[Message],
        identity: Identity,
        request_id: str,
        idempotency_key: str = "",
    ) -> Message:
        local = self._local.get(full_method)
        if local is not None:
            return await local(request, identity)
        backend = self._remote[full_method]
        stub: grpc.aio.UnaryUnaryMultiCallable[Message, Message] = backend.channel.unary_unary(
            full_method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        metadata = [
            (auth.METADATA_KEY, backend.tokens.token(identity)),
            ("x-request-id", request_id),
        ]
        if idempotency_key:
            # The owning service records it with the write: a retry after a lost answer
            # returns the first result instead of writing twice.
            metadata.append((idempotency.METADATA_KEY, idempotency_key))
        try:
            response: Message = await stub(request, metadata=metadata, timeout=backend.timeout)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code in _TRANSPORT_FAILURES:
                # The channel's own text names internal addresses; callers get a plain one.
                log.warning("backend call failed", extra={"method": full_method, "code": code.name})
                raise ServiceError(code, _TRANSPORT_FAILURES[code]) from None
            raise from_rpc_error(err) from None
        return response

    async def close(self) -> None:
        for backend in self.backends:
            await backend.channel.close()
