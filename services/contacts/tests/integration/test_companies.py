"""Companies: CRUD with etags and events, and what deleting one does to its contacts."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import struct_pb2

from crm.contacts.v1 import contacts_pb2
from trellis_devstack.testing import failure

from .support import Running, Tenant, create_company, create_contact, define_field, events

COMPANY = "crm.contacts.company"


async def test_company_round_trip_with_one_event_per_write(
    service: Running, tenant: Tenant
) -> None:
    stub = service.stub
    await define_field(
        service,
        tenant,
        "founded",
        contacts_pb2.FIELD_TYPE_DATE,
        object_type=contacts_pb2.OBJECT_TYPE_COMPANY,
    )
    created = await create_company(
        service,
        tenant,
        name=" Acme ",
        domain="ACME.com",
        industry="Tools",
        size=12,
        custom_fields={"founded": struct_pb2.Value(string_value="1999-01-31")},
    )
    assert (created.name, created.domain, created.version) == ("Acme", "acme.com", 1)
    assert await service.outbox_types(tenant.id) == [f"{COMPANY}.created.v1"]
    got = await stub.GetCompany(contacts_pb2.GetCompanyRequest(id=created.id), metadata=tenant.md())
    assert got == created

    err = await failure(
        stub.UpdateCompany(
            contacts_pb2.UpdateCompanyRequest(
                id=created.id, company=contacts_pb2.Company(size=13), etag="stale"
            ),
            metadata=tenant.md(),
        )
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION

    updated = await stub.UpdateCompany(
        contacts_pb2.UpdateCompanyRequest(
            id=created.id,
            company=contacts_pb2.Company(size=13),
            update_mask=["size", "industry"],
            etag=created.etag,
        ),
        metadata=tenant.md(),
    )
    assert (updated.size, updated.industry, updated.version) == (13, "", 2)
    assert updated.etag != created.etag

    await stub.DeleteCompany(
        contacts_pb2.DeleteCompanyRequest(id=created.id, etag=updated.etag), metadata=tenant.md()
    )
    assert await service.outbox_types(tenant.id) == [
        f"{COMPANY}.created.v1",
        f"{COMPANY}.updated.v1",
        f"{COMPANY}.deleted.v1",
    ]
    _, changed, deleted = events(await service.outbox_data(tenant.id))
    assert changed["changed_fields"] == ["industry", "size"]
    assert (deleted["id"], deleted["version"]) == (created.id, "3")
    err = await failure(
        stub.GetCompany(contacts_pb2.GetCompanyRequest(id=created.id), metadata=tenant.md())
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND


async def test_deleting_a_company_detaches_its_contacts_as_changes(
    service: Running, tenant: Tenant
) -> None:
    stub = service.stub
    acme = await create_company(service, tenant, name="Acme")
    other = await create_company(service, tenant, name="Other")
    members = [
        await create_contact(service, tenant, first_name=f"m{i}", company_id=acme.id)
        for i in range(2)
    ]
    outsider = await create_contact(service, tenant, first_name="o", company_id=other.id)
    before = len(await service.outbox_types(tenant.id))

    await stub.DeleteCompany(contacts_pb2.DeleteCompanyRequest(id=acme.id), metadata=tenant.md())

    for member in members:
        now = await stub.GetContact(
            contacts_pb2.GetContactRequest(id=member.id), metadata=tenant.md()
        )
        assert (now.company_id, now.version) == ("", 2)
        assert now.etag != member.etag
    still = await stub.GetContact(
        contacts_pb2.GetContactRequest(id=outsider.id), metadata=tenant.md()
    )
    assert still == outsider
    types = (await service.outbox_types(tenant.id))[before:]
    assert types == [
        "crm.contacts.contact.updated.v1",
        "crm.contacts.contact.updated.v1",
        f"{COMPANY}.deleted.v1",
    ]
    updates = events(await service.outbox_data(tenant.id))[before : before + 2]
    assert {u["contact"]["id"] for u in updates} == {m.id for m in members}
    assert all(u["changed_fields"] == ["company_id"] for u in updates)


async def test_linking_contacts_to_a_company_being_deleted_never_fails_badly(
    service: Running, tenant: Tenant
) -> None:
    stub = service.stub
    for _ in range(3):
        doomed = await create_company(service, tenant, name="Doomed")
        loose = [await create_contact(service, tenant, first_name=f"l{i}") for i in range(3)]
        link = contacts_pb2.Contact(company_id=doomed.id)
        results = await asyncio.gather(
            *(
                stub.UpdateContact(
                    contacts_pb2.UpdateContactRequest(id=c.id, contact=link), metadata=tenant.md()
                )
                for c in loose
            ),
            stub.DeleteCompany(
                contacts_pb2.DeleteCompanyRequest(id=doomed.id), metadata=tenant.md()
            ),
            create_contact(service, tenant, first_name="n", company_id=doomed.id),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                # Too late: the company was gone by the time the link was checked.
                assert result.code() is grpc.StatusCode.INVALID_ARGUMENT, result.details()
        # Whoever linked in time was detached by the deletion: no contact points at it.
        listed = await stub.ListContacts(
            contacts_pb2.ListContactsRequest(company_id=doomed.id), metadata=tenant.md()
        )
        assert list(listed.contacts) == []
