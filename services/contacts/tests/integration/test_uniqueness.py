"""One contact per email address and tenant, case-insensitively, even under concurrent writes."""

from __future__ import annotations

import asyncio

import grpc

from crm.contacts.v1 import contacts_pb2
from crmkit.errors import violations_of
from trellis_devstack.testing import failure

from .support import Running, Tenant, create_contact, define_field


async def test_a_taken_address_names_its_contact(service: Running, tenant: Tenant) -> None:
    first = await create_contact(service, tenant, first_name="Ada", emails=["Ada@Example.com"])
    err = await failure(
        create_contact(service, tenant, first_name="B", emails=["b@example.com", "ADA@example.COM"])
    )
    assert err.code() is grpc.StatusCode.ALREADY_EXISTS
    assert first.id in (err.details() or "")
    [(field, message)] = violations_of(err)
    assert field == "contact.emails[1]"
    assert first.id in message
    # Nothing of the refused contact remains: not the row, not b@example.com, not an event.
    assert await service.count("contacts", tenant.id) == 1
    assert await service.count("contact_emails", tenant.id) == 1
    assert len(await service.outbox_types(tenant.id)) == 1


async def test_updates_respect_uniqueness_and_free_old_addresses(
    service: Running, tenant: Tenant
) -> None:
    stub = service.stub
    a = await create_contact(service, tenant, emails=["a@example.com"])
    b = await create_contact(service, tenant, emails=["b@example.com"])

    def set_emails(record_id: str, *emails: str) -> contacts_pb2.UpdateContactRequest:
        return contacts_pb2.UpdateContactRequest(
            id=record_id, contact=contacts_pb2.Contact(emails=emails), update_mask=["emails"]
        )

    err = await failure(stub.UpdateContact(set_emails(b.id, "A@EXAMPLE.COM"), metadata=tenant.md()))
    assert err.code() is grpc.StatusCode.ALREADY_EXISTS
    assert a.id in (err.details() or "")

    # Changing the case of one's own address is no conflict.
    own = await stub.UpdateContact(set_emails(a.id, "A@Example.com"), metadata=tenant.md())
    assert list(own.emails) == ["A@Example.com"]
    # Giving an address up frees it for another contact.
    await stub.UpdateContact(set_emails(a.id, "a2@example.com"), metadata=tenant.md())
    moved = await stub.UpdateContact(set_emails(b.id, "a@example.com"), metadata=tenant.md())
    assert list(moved.emails) == ["a@example.com"]
    # And deleting a contact frees its addresses.
    await stub.DeleteContact(contacts_pb2.DeleteContactRequest(id=b.id), metadata=tenant.md())
    await create_contact(service, tenant, emails=["A@example.com"])


async def test_addresses_are_unique_per_tenant_only(
    service: Running, tenant: Tenant, other_tenant: Tenant
) -> None:
    await create_contact(service, tenant, emails=["shared@example.com"])
    await create_contact(service, other_tenant, emails=["shared@example.com"])


async def test_concurrent_creates_of_one_address_let_exactly_one_win(
    service: Running, tenant: Tenant
) -> None:
    results = await asyncio.gather(
        *(
            create_contact(
                service, tenant, emails=[("race@example.com", "RACE@Example.com")[i % 2]]
            )
            for i in range(8)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, contacts_pb2.Contact)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 7
    assert {e.code() for e in losers} == {grpc.StatusCode.ALREADY_EXISTS}
    assert all(winners[0].id in (e.details() or "") for e in losers)
    assert await service.count("contacts", tenant.id) == 1
    assert len(await service.outbox_types(tenant.id)) == 1


async def test_concurrent_creates_with_overlapping_addresses_do_not_deadlock(
    service: Running, tenant: Tenant
) -> None:
    # Claimed in opposite orders by the requests, sorted by the service: one wins, no 500.
    results = await asyncio.gather(
        create_contact(service, tenant, emails=["x@example.com", "y@example.com"]),
        create_contact(service, tenant, emails=["y@example.com", "x@example.com"]),
        return_exceptions=True,
    )
    assert len([r for r in results if isinstance(r, contacts_pb2.Contact)]) == 1
    codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert codes == [grpc.StatusCode.ALREADY_EXISTS]


async def test_a_field_name_is_defined_once_per_record_type(
    service: Running, tenant: Tenant
) -> None:
    await define_field(service, tenant, "tier", contacts_pb2.FIELD_TYPE_STRING)
    err = await failure(define_field(service, tenant, "tier", contacts_pb2.FIELD_TYPE_NUMBER))
    assert err.code() is grpc.StatusCode.ALREADY_EXISTS
    assert [f for f, _ in violations_of(err)] == ["field_definition.name"]
    # The same name on companies is another field.
    await define_field(
        service,
        tenant,
        "tier",
        contacts_pb2.FIELD_TYPE_NUMBER,
        object_type=contacts_pb2.OBJECT_TYPE_COMPANY,
    )
    listed = await service.stub.ListFieldDefinitions(
        contacts_pb2.ListFieldDefinitionsRequest(), metadata=tenant.md()
    )
    assert [(d.object_type, d.name, d.type) for d in listed.field_definitions] == [
        (contacts_pb2.OBJECT_TYPE_COMPANY, "tier", contacts_pb2.FIELD_TYPE_NUMBER),
        (contacts_pb2.OBJECT_TYPE_CONTACT, "tier", contacts_pb2.FIELD_TYPE_STRING),
    ]
    only_contacts = await service.stub.ListFieldDefinitions(
        contacts_pb2.ListFieldDefinitionsRequest(object_type=contacts_pb2.OBJECT_TYPE_CONTACT),
        metadata=tenant.md(),
    )
    assert [d.type for d in only_contacts.field_definitions] == [contacts_pb2.FIELD_TYPE_STRING]


async def test_contacts_exchanging_addresses_concurrently_never_fail_badly(
    service: Running, tenant: Tenant
) -> None:
    # Each releases its own address before claiming the other's: the lock orders cross, and
    # PostgreSQL may abort one as a deadlock victim, which the service retries.
    for n in range(5):
        a = await create_contact(service, tenant, emails=[f"a{n}@example.com"])
        b = await create_contact(service, tenant, emails=[f"b{n}@example.com"])
        results = await asyncio.gather(
            *(
                service.stub.UpdateContact(
                    contacts_pb2.UpdateContactRequest(
                        id=mine.id,
                        contact=contacts_pb2.Contact(emails=theirs.emails),
                        update_mask=["emails"],
                    ),
                    metadata=tenant.md(),
                )
                for mine, theirs in ((a, b), (b, a))
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                assert result.code() is grpc.StatusCode.ALREADY_EXISTS, result.details()
            else:
                assert isinstance(result, contacts_pb2.Contact)
