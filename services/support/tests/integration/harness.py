"""What the support integration tests share: the real support and contacts services in this
process (over real gRPC channels, PostgreSQL and NATS), a clock the tests move, tenants with
identity tokens, and views of the database behind the service's back."""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crm.support.v1 import support_pb2 as pb
from crm.support.v1 import support_pb2_grpc
from crmkit import auth
from crmkit.errors import violations_of
from trellis_contacts.config import ContactsSettings
from trellis_devstack import testing
from trellis_devstack.testing import Served
from trellis_support.app import definition
from trellis_support.config import SupportSettings

KEY = auth.SigningKey.generate("gateway-test")
AGENT = (
    "support:read",
    "support:write",
    "support:admin",
    "kb:read",
    "kb:write",
    "contacts:read",
    "contacts:write",
)
HOUR = 3600


class FakeClock:
    """The services' clock in these tests: it moves only when a test moves it, and only
    forward (tickets of earlier tests keep consistent histories)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def next(self, weekday: int, hour: int) -> datetime:
        """Move to the next `weekday` (Monday 0) at `hour`:00 UTC: a known point of the week
        for business-hours cases."""
        day = self.now.date() + timedelta(days=(weekday - self.now.weekday()) % 7 or 7)
        self.now = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
        return self.now


def token(tenant_id: str, scopes: Iterable[str] = AGENT, principal: str = "key-1") -> str:
    return testing.mint(KEY, tenant_id, scopes, principal)


def support_settings(app_url: str, nats_url: str, contacts: str, **extra: Any) -> SupportSettings:
    return SupportSettings.model_validate(
        {
            **testing.service_settings(nats_url, KEY),
            "database_url": app_url,
            "contacts_addr": contacts,
            "sla_check_interval_seconds": 0.02,
            **extra,
        }
    )


def start_support(
    app_url: str, nats_url: str, contacts: str, clock: FakeClock, **extra: Any
) -> AbstractAsyncContextManager[Served]:
    settings = support_settings(app_url, nats_url, contacts, **extra)
    return testing.served(definition(clock), settings)


def support_stub(instance: Served) -> support_pb2_grpc.SupportServiceAsyncStub:
    return support_pb2_grpc.SupportServiceStub(instance.channel)


def contacts_settings(app_url: str, nats_url: str) -> ContactsSettings:
    return ContactsSettings.model_validate(
        {**testing.service_settings(nats_url, KEY), "database_url": app_url}
    )


@dataclass
class Database:
    """A service's database seen from behind: the superuser sees every tenant's rows."""

    admin_url: str

    async def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.admin_url) as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def events(self, tenant_id: str, ce_type: str = "") -> list[tuple[str, dict[str, Any]]]:
        """(ce_type, data) of the tenant's outbox rows, in order; of one type if given."""
        rows = await self.rows(
            "SELECT ce_type, data FROM outbox WHERE tenant_id = %s"
            " AND (%s = '' OR ce_type = %s) ORDER BY seq",
            tenant_id,
            ce_type,
            ce_type,
        )
        return [(r[0], json.loads(bytes(r[1]))) for r in rows]


@dataclass
class Platform:
    """The services under test and their clock."""

    support: Served
    contacts: Served
    db: Database
    clock: FakeClock
    app_url: str
    nats_url: str

    @property
    def stub(self) -> support_pb2_grpc.SupportServiceAsyncStub:
        return support_stub(self.support)

    @property
    def contacts_stub(self) -> contacts_pb2_grpc.ContactsServiceAsyncStub:
        return contacts_pb2_grpc.ContactsServiceStub(self.contacts.channel)


@dataclass
class Tenant:
    id: str
    scopes: tuple[str, ...] = AGENT
    contact_ids: list[str] = field(default_factory=list)

    def md(self, *scopes: str, principal: str = "key-1") -> tuple[tuple[str, str], ...]:
        return ((auth.METADATA_KEY, token(self.id, scopes or self.scopes, principal)),)


def field_errors(err: grpc.aio.AioRpcError) -> dict[str, str]:
    return dict(violations_of(err))


async def new_contact(p: Platform, tenant: Tenant, **fields: Any) -> contacts_pb2.Contact:
    return await p.contacts_stub.CreateContact(
        contacts_pb2.CreateContactRequest(
            contact=contacts_pb2.Contact(**{"first_name": "Ada", **fields})
        ),
        metadata=tenant.md(),
    )


async def new_ticket(p: Platform, tenant: Tenant, contact_id: str = "", **fields: Any) -> pb.Ticket:
    if not contact_id:
        contact_id = (await new_contact(p, tenant)).id
    ticket = pb.Ticket(**{"subject": "Printer on fire", "contact_id": contact_id, **fields})
    return await p.stub.CreateTicket(pb.CreateTicketRequest(ticket=ticket), metadata=tenant.md())


async def new_policy(p: Platform, tenant: Tenant, **fields: Any) -> pb.SlaPolicy:
    policy = pb.SlaPolicy(**{"name": "Standard", **fields})
    return await p.stub.CreateSlaPolicy(
        pb.CreateSlaPolicyRequest(sla_policy=policy), metadata=tenant.md()
    )


def targets(**seconds: int) -> pb.SlaTargets:
    found = pb.SlaTargets()
    for name, value in seconds.items():
        getattr(found, name).FromSeconds(value)
    return found


async def reply(
    p: Platform, tenant: Tenant, ticket_id: str, body: str = "On it.", **fields: Any
) -> pb.Comment:
    return await p.stub.CreateComment(
        pb.CreateCommentRequest(ticket_id=ticket_id, comment=pb.Comment(body=body, **fields)),
        metadata=tenant.md(),
    )


async def set_status(
    p: Platform, tenant: Tenant, ticket_id: str, status: pb.TicketStatus.ValueType
) -> pb.Ticket:
    return await p.stub.ChangeTicketStatus(
        pb.ChangeTicketStatusRequest(id=ticket_id, status=status), metadata=tenant.md()
    )
