"""What the sales integration tests share: a settable clock, callers, events to publish."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
from nats.js import JetStreamContext

from crm.contacts.v1 import contacts_pb2_grpc
from crm.sales.v1 import sales_pb2, sales_pb2_grpc
from crmkit import auth, bus
from crmkit.ids import new_id
from trellis_devstack import testing

KEY = auth.SigningKey.generate("gateway-test")
ALL = ("sales:read", "sales:write", "sales:admin", "contacts:read", "contacts:write")


class ManualClock:
    """The service's clock in these tests: now, until a test moves it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Running:
    """The sales service under test (and the contacts service it calls)."""

    channel: grpc.aio.Channel
    stub: sales_pb2_grpc.SalesServiceAsyncStub
    contacts: contacts_pb2_grpc.ContactsServiceAsyncStub
    clock: ManualClock
    js: JetStreamContext
    admin_url: str  # superuser: sees every tenant's rows

    async def count(self, table: str, tenant_id: str) -> int:
        return await testing.count_rows(self.admin_url, table, tenant_id)

    async def outbox_types(self, tenant_id: str) -> list[str]:
        return await testing.outbox_types(self.admin_url, tenant_id)

    async def outbox_events(self, tenant_id: str, ce_type: str) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(self.admin_url) as conn:
            cur = await conn.execute(
                "SELECT data FROM outbox WHERE tenant_id = %s AND ce_type = %s ORDER BY seq",
                (tenant_id, ce_type),
            )
            return [json.loads(bytes(r[0])) for r in await cur.fetchall()]

    async def publish(
        self,
        tenant_id: str,
        ce_type: str,
        subject_id: str,
        version: int,
        data: dict[str, Any],
        *,
        event_id: str | None = None,
        time: datetime | None = None,
    ) -> str:
        """Publish an event as another service would; returns its id. A repeat of an event id
        gets a new Nats-Msg-Id, so the stream delivers it again (a redelivery)."""
        _, domain, entity, action, _ = ce_type.split(".")
        event_id = event_id or new_id()
        headers = bus.ce_headers(
            event_id=event_id,
            source=f"/trellis/{domain}",
            ce_type=ce_type,
            time=time or self.clock.now,
            subject=subject_id,
            tenant_id=tenant_id,
            record_version=version,
            dataschema="",
        )
        headers["Nats-Msg-Id"] = new_id()
        await self.js.publish(
            bus.event_subject(tenant_id, domain, entity, action),
            json.dumps(data).encode(),
            headers=headers,
        )
        return event_id


def token(tenant_id: str, scopes: Iterable[str] = ALL, principal: str = "key-1") -> str:
    return testing.mint(KEY, tenant_id, scopes, principal)


@dataclass
class Tenant:
    id: str

    def md(self, *scopes: str, principal: str = "key-1", key: str = "") -> tuple[Any, ...]:
        md: list[tuple[str, str]] = [(auth.METADATA_KEY, token(self.id, scopes or ALL, principal))]
        if key:
            md.append(("idempotency-key", key))
        return tuple(md)


async def create_lead(service: Running, tenant: Tenant, **fields: Any) -> sales_pb2.Lead:
    return await service.stub.CreateLead(
        sales_pb2.CreateLeadRequest(lead=sales_pb2.Lead(**fields)), metadata=tenant.md()
    )


async def create_rule(service: Running, tenant: Tenant, **fields: Any) -> sales_pb2.ScoringRule:
    return await service.stub.CreateScoringRule(
        sales_pb2.CreateScoringRuleRequest(scoring_rule=sales_pb2.ScoringRule(**fields)),
        metadata=tenant.md(),
    )


async def default_pipeline(service: Running, tenant: Tenant) -> sales_pb2.Pipeline:
    listed = await service.stub.ListPipelines(
        sales_pb2.ListPipelinesRequest(), metadata=tenant.md()
    )
    return next(p for p in listed.pipelines if p.is_default)


async def create_deal(service: Running, tenant: Tenant, **fields: Any) -> sales_pb2.Deal:
    fields.setdefault("currency", "EUR")
    fields.setdefault("name", "A deal")
    return await service.stub.CreateDeal(
        sales_pb2.CreateDealRequest(deal=sales_pb2.Deal(**fields)), metadata=tenant.md()
    )
