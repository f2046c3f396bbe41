"""One way to call any RPC the gateway publishes, whoever implements it.

REST and gRPC callers both end here: a call names the RPC by its gRPC path and carries the
verified identity. Backend services are reached over gRPC with the signed internal token;
the gateway's own services (tenants, API keys) are plain async functions in this process.
Either way failures come back as ServiceError, so both front ends map errors one way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from crmkit import auth
from crmkit.context import Identity
from crmkit.errors import ServiceError, violations_of

LocalHandler = Callable[[Message, Identity], Awaitable[Message]]

log = logging.getLogger(__name__)

_TRANSPORT_FAILURES = {
    grpc.StatusCode.UNAVAILABLE: "the service is unavailable; retry later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the service did not answer in time; retry later",
    grpc.StatusCode.UNKNOWN: "internal error",
}

# Reads are retried on a transient failure; writes never are (the caller retries those, with
# an Idempotency-Key).
_RETRYABLE_PREFIXES = ("Get", "List")


def _service_config(service: str, methods: list[str]) -> str:
    retry = {
        "maxAttempts": 3,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    names = [
        {"service": service, "method": m} for m in methods if m.startswith(_RETRYABLE_PREFIXES)
    ]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": retry}]})


@dataclass(frozen=True)
class Backend:
    channel: grpc.aio.Channel
    tokens: auth.TokenCache
    timeout: float


class Dispatcher:
    def __init__(self) -> None:
        self._local: dict[str, LocalHandler] = {}
        self._remote: dict[str, Backend] = {}
        self._channels: list[grpc.aio.Channel] = []

    def add_local(self, handlers: Mapping[str, LocalHandler]) -> None:
        self._local.update(handlers)

    def add_backend(
        self, service_descriptor: object, address: str, secret: str, timeout: float
    ) -> None:
        from google.protobuf.descriptor import ServiceDescriptor

        assert isinstance(service_descriptor, ServiceDescriptor)
        methods = [m.name for m in service_descriptor.methods]
        channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.service_config", _service_config(service_descriptor.full_name, methods)),
                ("grpc.enable_retries", 1),
            ],
            interceptors=aio_client_interceptors(),
        )
        self._channels.append(channel)
        backend = Backend(channel, auth.TokenCache(secret), timeout)
        for name in methods:
            self._remote[f"/{service_descriptor.full_name}/{name}"] = backend

    async def call(
        self,
        full_method: str,
        request: Message,
        response_class: type[Message],
        identity: Identity,
        request_id: str,
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
        metadata = (
            (auth.METADATA_KEY, backend.tokens.token(identity)),
            ("x-request-id", request_id),
        )
        try:
            response: Message = await stub(request, metadata=metadata, timeout=backend.timeout)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code in _TRANSPORT_FAILURES:
                # The channel's own text names internal addresses; callers get a plain one.
                log.warning("backend call failed", extra={"method": full_method, "code": code.name})
                raise ServiceError(code, _TRANSPORT_FAILURES[code]) from None
            raise ServiceError(code, err.details() or "", violations_of(err)) from None
        return response

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
