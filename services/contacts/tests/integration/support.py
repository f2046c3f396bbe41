"""What the contacts integration tests share: the service's settings, health, callers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit import auth
from trellis_contacts.config import ContactsSettings
from trellis_devstack import testing

KEY = auth.SigningKey.generate("gateway-test")
READ_WRITE = ("contacts:read", "contacts:write")


def settings_for(app_url: str, nats_url: str) -> ContactsSettings:
    return ContactsSettings.model_validate(
        {**testing.service_settings(nats_url, KEY), "database_url": app_url}
    )


@dataclass
class Running:
    """The service under test and ways to look at its database behind its back."""

    address: str
    channel: grpc.aio.Channel
    stub: contacts_pb2_grpc.ContactsServiceAsyncStub
    admin_url: str  # superuser: sees every tenant's rows (RLS does not bind it)
    app_url: str
    app_role: str

    async def count(self, table: str, tenant_id: str) -> int:
        return await testing.count_rows(self.admin_url, table, tenant_id)

    async def outbox_types(self, tenant_id: str) -> list[str]:
        return await testing.outbox_types(self.admin_url, tenant_id)

    async def outbox_data(self, tenant_id: str) -> list[bytes]:
        async with await psycopg.AsyncConnection.connect(self.admin_url) as conn:
            cur = await conn.execute(
                "SELECT data FROM outbox WHERE tenant_id = %s ORDER BY seq", (tenant_id,)
            )
            return [bytes(r[0]) for r in await cur.fetchall()]


def token(tenant_id: str, scopes: Iterable[str] = READ_WRITE, principal: str = "key-1") -> str:
    return testing.mint(KEY, tenant_id, scopes, principal)


@dataclass
class Tenant:
    """A fresh tenant; md() is the metadata of its calls with the given scopes."""

    id: str

    def md(self, *scopes: str, principal: str = "key-1") -> tuple[tuple[str, str]]:
        return ((auth.METADATA_KEY, token(self.id, scopes or READ_WRITE, principal)),)


async def create_contact(service: Running, tenant: Tenant, **fields: Any) -> contacts_pb2.Contact:
    return await service.stub.CreateContact(
        contacts_pb2.CreateContactRequest(contact=contacts_pb2.Contact(**fields)),
        metadata=tenant.md(),
    )


async def create_company(service: Running, tenant: Tenant, **fields: Any) -> contacts_pb2.Company:
    return await service.stub.CreateCompany(
        contacts_pb2.CreateCompanyRequest(company=contacts_pb2.Company(**fields)),
        metadata=tenant.md(),
    )


async def define_field(
    service: Running,
    tenant: Tenant,
    name: str,
    type_: contacts_pb2.FieldType.ValueType,
    options: Iterable[str] = (),
    object_type: contacts_pb2.ObjectType.ValueType = contacts_pb2.OBJECT_TYPE_CONTACT,
) -> contacts_pb2.FieldDefinition:
    definition = contacts_pb2.FieldDefinition(
        object_type=object_type, name=name, type=type_, options=options
    )
    return await service.stub.CreateFieldDefinition(
        contacts_pb2.CreateFieldDefinitionRequest(field_definition=definition),
        metadata=tenant.md("admin"),
    )


def events(raw: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(r) for r in raw]
