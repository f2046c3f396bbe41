"""What the gateway integration tests share: a migrated database, the gateway assembled from
its settings as `wire` assembles it (with clocks the test moves), and a backend to call.

The backend is a real gRPC server in this process serving the contacts contract: each test
says what its RPCs answer, and it records what the gateway sent (metadata, requests).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2_grpc

from crm.contacts.v1 import contacts_pb2
from crmkit import auth, contract
from crmkit.db import Pool
from crmkit.errors import ServiceError
from trellis_devstack.infra import free_port
from trellis_gateway.app import Clocks, Parts, assemble
from trellis_gateway.config import GatewaySettings
from trellis_gateway.http_app import asgi

BOOTSTRAP = "bootstrap-key-of-the-platform-operator-0123456789"
SIGNING_KEY = auth.SigningKey.generate("gateway-1")
CONTACTS = contract.services_of_domain("contacts")


@dataclass(frozen=True)
class GatewayDb:
    name: str
    app_url: str
    superuser_url: str  # bypasses everything: to look behind the gateway's back, or end it


class ManualClock:
    """Time that moves only when the test moves it, as monotonic seconds and as UTC."""

    def __init__(self) -> None:
        self.seconds = 1000.0
        self._epoch = datetime(2030, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.seconds

    def wall(self) -> datetime:
        return self._epoch + timedelta(seconds=self.seconds)

    def advance(self, seconds: float) -> None:
        self.seconds += seconds

    def clocks(self) -> Clocks:
        return Clocks(monotonic=self.monotonic, wall=self.wall)


def settings_for(app_url: str, **overrides: Any) -> GatewaySettings:
    return GatewaySettings.model_validate(
        {
            "database_url": app_url,
            "bootstrap_admin_key": BOOTSTRAP,
            "backend_timeout_seconds": 5,
            "INTERNAL_TOKEN_PUBLIC_KEYS": auth.jwks(SIGNING_KEY.public_jwk()),
            "INTERNAL_TOKEN_PRIVATE_KEY": SIGNING_KEY.pem(),
            "INTERNAL_TOKEN_KEY_ID": SIGNING_KEY.kid,
            **overrides,
        }
    )


async def always_ready() -> bool:
    return True


@dataclass
class Harness:
    """The gateway's REST app over a real database, called in-process."""

    parts: Parts
    settings: GatewaySettings
    clock: ManualClock
    app: Any

    def client(self, key: str | None = None, address: str = "192.0.2.10") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers)

    async def tenant(self, scopes: tuple[str, ...] = ("admin",)) -> tuple[str, str]:
        """A new tenant and a key for it: (tenant id, secret)."""
        async with self.client(BOOTSTRAP) as op:
            made = await op.post("/v1/tenants", json={"name": f"t-{uuid.uuid4().hex[:6]}"})
            assert made.status_code == 201, made.text
            tenant_id = made.json()["id"]
            key = await self.key(tenant_id, scopes)
        return tenant_id, key

    async def key(self, tenant_id: str, scopes: tuple[str, ...] = ("admin",)) -> str:
        async with self.client(BOOTSTRAP) as op:
            made = await op.post(
                "/v1/api-keys",
                json={"tenant_id": tenant_id, "name": "k", "scopes": list(scopes)},
            )
        assert made.status_code == 201, made.text
        return str(made.json()["secret"])

    async def close(self) -> None:
        await self.parts.dispatcher.close()


def harness(
    pool: Pool,
    app_url: str,
    clock: ManualClock,
    tracer_provider: Any = None,
    ready: Callable[[], Awaitable[bool]] = always_ready,
    **overrides: Any,
) -> Harness:
    settings = settings_for(app_url, **overrides)
    parts = assemble(settings, pool, ready, clock.clocks())
    return Harness(parts, settings, clock, asgi(parts.gateway, tracer_provider))


Behaviour = Callable[[Message, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]


@dataclass
class FakeContacts:
    """A contacts backend whose answers each test chooses (default: UNIMPLEMENTED)."""

    port: int = field(default_factory=free_port)
    answers: dict[str, Behaviour] = field(default_factory=dict)
    metadata: list[dict[str, str]] = field(default_factory=list)
    health: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)
    server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for method in CONTACTS[0].methods:
            request_class = message_factory.GetMessageClass(method.input_type)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                self._behaviour(method.name),
                request_deserializer=request_class.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(CONTACTS[0].full_name, handlers)]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.server.add_insecure_port(self.address)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None

    def _behaviour(self, name: str) -> Behaviour:
        async def behave(request: Message, ctx: grpc.aio.ServicerContext[Any, Any]) -> Message:
            self.metadata.append(
                {k: v for k, v in ctx.invocation_metadata() or () if isinstance(v, str)}
            )
            answer = self.answers.get(name)
            if answer is None:
                await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")
            assert answer is not None
            return await answer(request, ctx)

        return behave


def fails_with(error: ServiceError) -> Behaviour:
    """An RPC that fails as a chassis service does: code, message and details."""

    async def fail(_: Message, ctx: grpc.aio.ServicerContext[Any, Any]) -> Message:
        await ctx.abort_with_status(error.to_status())
        raise AssertionError("abort returns by raising")

    return fail


def answers(message: Message) -> Behaviour:
    async def answer(_: Message, __: grpc.aio.ServicerContext[Any, Any]) -> Message:
        return message

    return answer


def contact(contact_id: str, etag: str = "e1") -> contacts_pb2.Contact:
    return contacts_pb2.Contact(id=contact_id, first_name="Ada", etag=etag, version=1)
