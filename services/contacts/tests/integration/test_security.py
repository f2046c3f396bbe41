"""Who may call, and what one tenant can see of another's: nothing, not even that it exists."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable

import grpc
import psycopg
import pytest

from crm.contacts.v1 import contacts_pb2
from crmkit import auth
from crmkit.context import Identity
from trellis_devstack.testing import failure

from .support import KEY, Running, Tenant, create_company, create_contact


async def test_another_tenant_gets_not_found_and_empty_lists(
    service: Running, tenant: Tenant, other_tenant: Tenant
) -> None:
    stub, md = service.stub, other_tenant.md()
    company = await create_company(service, tenant, name="Acme")
    contact = await create_contact(
        service, tenant, first_name="Ada", emails=["ada@example.com"], company_id=company.id
    )
    calls: list[Awaitable[object]] = [
        stub.GetContact(contacts_pb2.GetContactRequest(id=contact.id), metadata=md),
        stub.UpdateContact(
            contacts_pb2.UpdateContactRequest(
                id=contact.id, contact=contacts_pb2.Contact(first_name="Eve")
            ),
            metadata=md,
        ),
        stub.DeleteContact(contacts_pb2.DeleteContactRequest(id=contact.id), metadata=md),
        stub.GetCompany(contacts_pb2.GetCompanyRequest(id=company.id), metadata=md),
        stub.UpdateCompany(
            contacts_pb2.UpdateCompanyRequest(
                id=company.id, company=contacts_pb2.Company(name="E")
            ),
            metadata=md,
        ),
        stub.DeleteCompany(contacts_pb2.DeleteCompanyRequest(id=company.id), metadata=md),
    ]
    for call in calls:
        err = await failure(call)
        assert err.code() is grpc.StatusCode.NOT_FOUND
    listed = await stub.ListContacts(
        contacts_pb2.ListContactsRequest(company_id=company.id), metadata=md
    )
    assert list(listed.contacts) == []
    assert (
        list((await stub.ListContacts(contacts_pb2.ListContactsRequest(), metadata=md)).contacts)
        == []
    )
    assert (
        list((await stub.ListCompanies(contacts_pb2.ListCompaniesRequest(), metadata=md)).companies)
        == []
    )

    # Nor can B point its contact at A's company, or learn that A uses an address.
    err = await failure(
        create_contact(service, other_tenant, first_name="E", company_id=company.id)
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    await create_contact(service, other_tenant, emails=["ada@example.com"])

    # A's records are untouched.
    got = await stub.GetContact(contacts_pb2.GetContactRequest(id=contact.id), metadata=tenant.md())
    assert got == contact


@pytest.mark.parametrize("bad_id", ["", "42", "not-a-uuid", "'; DROP TABLE contacts; --", "0" * 64])
async def test_ids_that_cannot_exist_are_not_found(
    service: Running, tenant: Tenant, bad_id: str
) -> None:
    stub, md = service.stub, tenant.md()
    for call in (
        stub.GetContact(contacts_pb2.GetContactRequest(id=bad_id), metadata=md),
        stub.UpdateContact(
            contacts_pb2.UpdateContactRequest(
                id=bad_id, contact=contacts_pb2.Contact(first_name="x")
            ),
            metadata=md,
        ),
        stub.DeleteContact(contacts_pb2.DeleteContactRequest(id=bad_id), metadata=md),
        stub.GetCompany(contacts_pb2.GetCompanyRequest(id=bad_id), metadata=md),
        stub.DeleteCompany(contacts_pb2.DeleteCompanyRequest(id=bad_id), metadata=md),
    ):
        assert (await failure(call)).code() is grpc.StatusCode.NOT_FOUND
    unknown = str(uuid.uuid4())
    err = await failure(stub.GetContact(contacts_pb2.GetContactRequest(id=unknown), metadata=md))
    assert err.code() is grpc.StatusCode.NOT_FOUND


def _token(tenant_id: str, key: auth.SigningKey, ttl: int = 60) -> tuple[tuple[str, str]]:
    ident = Identity(tenant_id, "key-1", frozenset({"contacts:read"}))
    return ((auth.METADATA_KEY, auth.mint(ident, key, ttl_seconds=ttl)),)


async def test_calls_without_a_valid_token_are_unauthenticated(
    service: Running, tenant: Tenant
) -> None:
    request = contacts_pb2.ListContactsRequest()
    wrong_key = _token(tenant.id, auth.SigningKey.generate(KEY.kid))
    expired = _token(tenant.id, KEY, ttl=-120)
    no_tenant = _token("not-a-tenant-id", KEY)
    for metadata in (
        (),
        ((auth.METADATA_KEY, ""),),
        ((auth.METADATA_KEY, "garbage"),),
        (("x-tenant-id", tenant.id),),  # a bare header is never trusted
        wrong_key,
        expired,
        no_tenant,
    ):
        err = await failure(service.stub.ListContacts(request, metadata=metadata))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED, metadata


async def test_calls_need_their_scope(service: Running, tenant: Tenant) -> None:
    stub = service.stub
    read_only = tenant.md("contacts:read")
    write_only = tenant.md("contacts:write")
    err = await failure(
        stub.CreateContact(
            contacts_pb2.CreateContactRequest(contact=contacts_pb2.Contact(first_name="A")),
            metadata=read_only,
        )
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    err = await failure(stub.ListContacts(contacts_pb2.ListContactsRequest(), metadata=write_only))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    # Defining fields is for admins: contacts:write is not enough.
    err = await failure(
        stub.CreateFieldDefinition(
            contacts_pb2.CreateFieldDefinitionRequest(
                field_definition=contacts_pb2.FieldDefinition(
                    object_type=contacts_pb2.OBJECT_TYPE_CONTACT,
                    name="x",
                    type=contacts_pb2.FIELD_TYPE_STRING,
                )
            ),
            metadata=tenant.md("contacts:read", "contacts:write"),
        )
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert await service.count("contacts", tenant.id) == 0
    assert await service.count("field_definitions", tenant.id) == 0
    await stub.ListContacts(contacts_pb2.ListContactsRequest(), metadata=read_only)


async def test_row_level_security_binds_the_app_role_even_in_raw_sql(
    service: Running, tenant: Tenant, other_tenant: Tenant
) -> None:
    await create_contact(service, tenant, first_name="Ada", emails=["rls@example.com"])
    await create_company(service, tenant, name="Acme")
    tables = ("contacts", "companies", "contact_emails")
    async with await psycopg.AsyncConnection.connect(service.app_url, autocommit=True) as conn:
        # No tenant set at all: nothing, whatever the WHERE clause says.
        for table in tables:
            cur = await conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
                    psycopg.sql.Identifier(table)
                ),
                (tenant.id,),
            )
            assert await cur.fetchone() == (0,), table
        # Another tenant's setting: still nothing of the first tenant's.
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', %s, true)", (other_tenant.id,))
            cur = await conn.execute("SELECT count(*) FROM contacts")
            assert await cur.fetchone() == (0,)
            cur = await conn.execute("UPDATE contacts SET first_name = 'Eve'")
            assert cur.rowcount == 0
        # After a transaction-local setting ends it reads '' (not NULL): still nothing, no error.
        cur = await conn.execute("SELECT count(*) FROM contacts")
        assert await cur.fetchone() == (0,)
        # With the tenant's own setting the rows are there, and writing rows of another
        # tenant is refused by the policy's WITH CHECK.
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant.id,))
            cur = await conn.execute("SELECT count(*) FROM contacts")
            assert await cur.fetchone() == (1,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                async with conn.transaction():
                    await conn.execute("UPDATE contacts SET tenant_id = %s", (other_tenant.id,))
        # And the app role does not own the tables, so it cannot switch RLS off.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("ALTER TABLE contacts DISABLE ROW LEVEL SECURITY")
