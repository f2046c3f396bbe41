"""One way to call any RPC the gateway publishes, whoever implements it.

REST and gRPC callers both end here: a call names the RPC by its gRPC path and carries the
verified identity. Backend services are reached over gRPC with the signed internal token;
the gateway's own services (tenants, API keys) are plain async functions in this process.
Either way failures come back as ServiceError, so both front ends map errors one way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from crmkit import auth, client, contract, telemetry
from crmkit.context import Identity
from crmkit.errors import ServiceError, from_rpc_error

LocalHandler = Callable[[Message, Identity], Awaitable[Message]]

log = logging.getLogger(__name__)

_TRANSPORT_FAILURES = {
    grpc.StatusCode.UNAVAILABLE: "the service is unavailable; retry later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the service did not answer in time; retry later",
    grpc.StatusCode.UNKNOWN: "internal error",
}


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class BadGateway(ServiceError):
    """A backend answer the gateway cannot pass on (larger than the channel accepts): a 502
    on the REST front, INTERNAL on the gRPC one, with a plain message either way."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, message)


def _service_error(err: grpc.aio.AioRpcError, full_method: str) -> ServiceError:
    """A failed backend call as the caller should see it.

    A status the service itself sent comes with its details (the chassis always attaches a
    google.rpc.Status) and passes on as it is. One without them was made by the transport
    (no connection, the deadline, a message over the size limit): its text names internal
    addresses and limits, so the caller gets a plain one.
    """
    if rpc_status.from_call(err) is not None:  # type: ignore[arg-type]
        return from_rpc_error(err)
    code = err.code()
    log.warning("backend call failed", extra={"method": full_method, "code": code.name})
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return BadGateway("the service's answer was too large to pass on")
    if code in _TRANSPORT_FAILURES:
        return ServiceError(code, _TRANSPORT_FAILURES[code])
    return from_rpc_error(err)


@dataclass(frozen=True)
class Backend:
    name: str
    channel: grpc.aio.Channel
    tokens: auth.TokenCache
    timeout: float
    address: str
    services: tuple[str, ...]  # the gRPC services it serves, full names


class Dispatcher:
    def __init__(self) -> None:
        # The backends' channels (crmkit.client.channel) make a span per call only when spans
        # are recorded; otherwise `call` passes the trace context on itself.
        self._traced = telemetry.recording()
        self._local: dict[str, LocalHandler] = {}
        self._stubs: dict[str, grpc.aio.UnaryUnaryMultiCallable[Message, Message]] = {}
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
        channel = client.channel(services, address)
        backend = Backend(
            name, channel, tokens, timeout, address, tuple(s.full_name for s in services)
        )
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
        stub = self._stubs.get(full_method)
        if stub is None:  # made once per method: a multicallable per call costs CPU
            stub = self._stubs[full_method] = backend.channel.unary_unary(
                full_method,
                request_serializer=_serialize,
                response_deserializer=response_class.FromString,
            )
        metadata = client.call_metadata(
            backend.tokens.token(identity), request_id, idempotency_key, self._traced
        )
        try:
            response: Message = await stub(request, metadata=metadata, timeout=backend.timeout)
        except grpc.aio.AioRpcError as err:
            raise _service_error(err, full_method) from None
        return response

    async def close(self) -> None:
        for backend in self.backends:
            await backend.channel.close()


ServingStatus = int  # a grpc.health.v1 HealthCheckResponse.ServingStatus value
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# How long to wait before watching a backend again after its health stream failed at once
# (a backend without the health service); reconnecting is paced by the channel itself.
_REWATCH_SECONDS = 1.0


class BackendHealth:
    """Each backend's health, as the backend's own grpc.health.v1 service reports it.

    One Watch stream per backend, on a channel of its own: the calls' channel connects when
    the first call needs it, and a health stream started with the gateway, before the
    backend listens, would put it in reconnect backoff (failing calls) just as the backend
    comes up. Until a backend first answers, and whenever its stream breaks, it counts as
    NOT_SERVING. Every change also goes to `publish`, when given, under
    each of the backend's service names: a health servicer's `set`, so a caller checking
    crm.contacts.v1.ContactsService at the gateway learns about contacts.
    """

    def __init__(
        self,
        backends: Iterable[Backend],
        publish: Callable[[str, ServingStatus], Awaitable[None]] | None = None,
    ) -> None:
        self._backends = list(backends)
        self._publish = publish
        self._status: dict[str, ServingStatus] = {b.name: NOT_SERVING for b in self._backends}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def statuses(self) -> dict[str, str]:
        """Backend name -> SERVING, NOT_SERVING, ..."""
        return {
            name: health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            for name, status in self._status.items()
        }

    async def run(self) -> None:
        for backend in self._backends:
            await self._set(backend, NOT_SERVING)
        if self._stopping.is_set():
            return
        self._tasks = [asyncio.create_task(self._watch(b)) for b in self._backends]
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()

    async def _watch(self, backend: Backend) -> None:
        async with grpc.aio.insecure_channel(
            backend.address, options=client.RECONNECT_OPTIONS
        ) as channel:
            await self._watch_on(backend, channel)

    async def _watch_on(self, backend: Backend, channel: grpc.aio.Channel) -> None:
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while not self._stopping.is_set():
            try:
                # wait_for_ready: while the backend is down the call waits for the channel
                # to connect again, instead of failing (and being retried) in a loop.
                call = watch(health_pb2.HealthCheckRequest(service=""), wait_for_ready=True)
                async for answer in call:
                    await self._set(backend, answer.status)
            except grpc.aio.AioRpcError as err:
                log.warning(
                    "backend health stream ended",
                    extra={"backend": backend.name, "code": err.code().name},
                )
            await self._set(backend, NOT_SERVING)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _REWATCH_SECONDS)

    async def _set(self, backend: Backend, status: ServingStatus) -> None:
        self._status[backend.name] = status
        if self._publish is not None:
            for name in backend.services:
                await self._publish(name, status)
