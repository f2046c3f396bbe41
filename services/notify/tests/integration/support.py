"""What the notify integration tests share: the service's settings and clock, callers, events
published as the other services publish them, and a partner's webhook receiver."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
from aiohttp import web
from nats.js import JetStreamContext

from crm.contacts.v1 import contacts_pb2_grpc
from crm.notify.v1 import notify_pb2, notify_pb2_grpc
from crmkit import auth, bus
from crmkit.ids import new_id
from trellis_devstack import testing
from trellis_devstack.infra import free_port
from trellis_notify.config import NotifySettings

KEY = auth.SigningKey.generate("gateway-test")
# notify's own key: it calls contacts as itself for campaigns, within contacts:read.
NOTIFY_KEY = auth.SigningKey.generate("notify-test")
READ_WRITE = ("notify:read", "notify:write")
# Short, so retries happen within a test; jitter as in production.
SCHEDULE = "0.5,1,2"


class Clock:
    """The service's clock: real time plus an offset the tests move, or frozen."""

    def __init__(self) -> None:
        self.offset = timedelta()
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        return self.frozen if self.frozen is not None else datetime.now(UTC) + self.offset

    def freeze(self) -> datetime:
        self.frozen = self()
        return self.frozen

    def set(self, moment: datetime) -> None:
        self.frozen = moment

    def thaw(self) -> None:
        self.frozen = None


def settings_for(app_url: str, nats_url: str, smtp_port: int, **overrides: Any) -> NotifySettings:
    return NotifySettings.model_validate(
        {
            **testing.service_settings(nats_url, KEY),
            "database_url": app_url,
            "webhook_allow_private": True,
            "webhook_timeout_seconds": 10,
            "webhook_retry_schedule": SCHEDULE,
            "webhook_concurrency": 16,
            "webhook_per_endpoint_concurrency": 2,
            "webhook_poll_seconds": 0.2,
            "http_port": free_port(),
            "unsubscribe_key": "k" * 40,
            "smtp_server": f"127.0.0.1:{smtp_port}",
            "smtp_tls": "none",
            "mail_from": "Trellis Test <notify@test.example>",
            "mail_retry_schedule": SCHEDULE,
            **overrides,
        }
    )


def token(tenant_id: str, scopes: Iterable[str] = READ_WRITE, principal: str = "key-1") -> str:
    return testing.mint(KEY, tenant_id, scopes, principal)


@dataclass
class Tenant:
    id: str

    def md(self, *scopes: str) -> tuple[tuple[str, str]]:
        return ((auth.METADATA_KEY, token(self.id, scopes or READ_WRITE)),)


@dataclass
class Contacts:
    address: str
    stub: contacts_pb2_grpc.ContactsServiceAsyncStub


@dataclass
class Running:
    address: str
    channel: grpc.aio.Channel
    stub: notify_pb2_grpc.NotifyServiceAsyncStub
    js: JetStreamContext
    clock: Clock
    admin_url: str
    public_url: str

    async def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows as the superuser sees them (every tenant's)."""
        async with await psycopg.AsyncConnection.connect(self.admin_url) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()


async def publish(
    js: JetStreamContext,
    tenant_id: str,
    *,
    record_id: str | None = None,
    version: int = 1,
    domain: str = "contacts",
    entity: str = "contact",
    action: str = "updated",
    data: dict[str, Any] | None = None,
    event_id: str | None = None,
    msg_id: str | None = None,
) -> str:
    """An event on the bus as the outbox relay of another service publishes it; its id.

    `event_id` publishes an event again; `msg_id` (the stream's dedupe id) makes the stream
    take it again, as a re-publish after the dedupe window or a re-drive would be."""
    event_id = event_id or new_id()
    record = record_id or new_id()
    headers = bus.ce_headers(
        event_id=event_id,
        ce_type=f"crm.{domain}.{entity}.{action}.v1",
        source=f"/trellis/{domain}",
        subject=record,
        tenant_id=tenant_id,
        time=datetime.now(UTC),
        record_version=version,
        dataschema=f"urn:trellis:schema:crm.{domain}.v1.Test",
    )
    if msg_id:
        headers["Nats-Msg-Id"] = msg_id
    body = json.dumps(data if data is not None else {"id": record, "version": str(version)})
    await js.publish(
        bus.event_subject(tenant_id, domain, entity, action), body.encode(), headers=headers
    )
    return event_id


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


Script = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """A partner's HTTP endpoint on 127.0.0.1: records every request and answers as its
    `script` says (200 by default). `stop()` closes the port (connections are refused) and
    `start()` opens it again on the same port."""

    port: int = field(default_factory=free_port)
    path: str = "/hooks"
    received: list[Received] = field(default_factory=list)
    script: Script | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer = await self.script(request) if self.script else web.Response(text="ok")
        self.received.append(Received(dict(request.headers), body, answer.status))
        return answer

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def accepted(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.status < 300]


def answer(status: int, **headers: str) -> Script:
    async def script(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers=headers, text=f"answer {status}")

    return script


async def create_webhook(
    service: Running, tenant: Tenant, url: str, event_types: Iterable[str] = ("*",), **fields: Any
) -> notify_pb2.Webhook:
    return await service.stub.CreateWebhook(
        notify_pb2.CreateWebhookRequest(
            webhook=notify_pb2.Webhook(url=url, event_types=list(event_types), **fields)
        ),
        metadata=tenant.md(),
    )


async def deliveries(
    service: Running, tenant: Tenant, webhook_id: str
) -> list[notify_pb2.WebhookDelivery]:
    answer = await service.stub.ListWebhookDeliveries(
        notify_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook_id, page_size=500),
        metadata=tenant.md(),
    )
    return list(answer.deliveries)
