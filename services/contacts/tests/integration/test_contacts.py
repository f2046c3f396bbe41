"""Contacts over gRPC: the CRUD round trip, update masks, etags, and the events each write leaves."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2

from crm.contacts.v1 import contacts_pb2
from trellis_devstack.testing import failure

from .support import Running, Tenant, create_contact, define_field, events

CONTACT = "crm.contacts.contact"


async def test_crud_round_trip_with_one_event_per_write(service: Running, tenant: Tenant) -> None:
    stub = service.stub
    await define_field(service, tenant, "tier", contacts_pb2.FIELD_TYPE_ENUM, ["gold", "silver"])
    created = await create_contact(
        service,
        tenant,
        first_name="  Ada ",
        last_name="Lovelace",
        emails=[" Ada@Example.COM"],
        phones=["+44 20 7946 0958"],
        tags=["vip"],
        lifecycle_stage=contacts_pb2.LIFECYCLE_STAGE_LEAD,
        custom_fields={"tier": struct_pb2.Value(string_value="gold")},
        id="ignored",
        version=42,
    )
    assert created.id != "ignored"
    assert (created.first_name, list(created.emails), list(created.phones)) == (
        "Ada",
        ["Ada@Example.COM"],  # stored as given; only uniqueness ignores case
        ["+442079460958"],
    )
    assert (created.version, created.lifecycle_stage) == (1, contacts_pb2.LIFECYCLE_STAGE_LEAD)
    assert created.custom_fields["tier"].string_value == "gold"
    assert created.etag
    assert await service.outbox_types(tenant.id) == [f"{CONTACT}.created.v1"]

    got = await stub.GetContact(contacts_pb2.GetContactRequest(id=created.id), metadata=tenant.md())
    assert got == created

    updated = await stub.UpdateContact(
        contacts_pb2.UpdateContactRequest(
            id=created.id,
            contact=contacts_pb2.Contact(first_name="Augusta", last_name="ignored: not in mask"),
            update_mask=["first_name"],
            etag=created.etag,
        ),
        metadata=tenant.md(principal="key-2"),
    )
    assert (updated.first_name, updated.last_name, updated.version) == ("Augusta", "Lovelace", 2)
    assert updated.etag != created.etag
    assert updated.update_time.ToDatetime() > created.update_time.ToDatetime()
    assert updated.create_time == created.create_time
    assert await service.outbox_types(tenant.id) == [
        f"{CONTACT}.created.v1",
        f"{CONTACT}.updated.v1",
    ]

    await stub.DeleteContact(
        contacts_pb2.DeleteContactRequest(id=created.id, etag=updated.etag), metadata=tenant.md()
    )
    err = await failure(
        stub.GetContact(contacts_pb2.GetContactRequest(id=created.id), metadata=tenant.md())
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert await service.outbox_types(tenant.id) == [
        f"{CONTACT}.created.v1",
        f"{CONTACT}.updated.v1",
        f"{CONTACT}.deleted.v1",
    ]
    assert await service.count("contacts", tenant.id) == 0
    assert await service.count("contact_emails", tenant.id) == 0

    created_event, updated_event, deleted_event = events(await service.outbox_data(tenant.id))
    assert created_event["contact"]["id"] == created.id
    assert created_event["metadata"]["tenant_id"] == tenant.id
    assert created_event["metadata"]["actor"] == "key-1"
    assert updated_event["changed_fields"] == ["first_name"]
    assert updated_event["contact"]["version"] == "2"  # proto3 JSON writes int64 as a string
    assert updated_event["metadata"]["actor"] == "key-2"
    assert deleted_event == {
        "metadata": deleted_event["metadata"],
        "id": created.id,
        "version": "3",
    }


async def test_an_empty_mask_writes_the_fields_set_in_the_message(
    service: Running, tenant: Tenant
) -> None:
    created = await create_contact(service, tenant, first_name="Ada", tags=["a"])
    updated = await service.stub.UpdateContact(
        contacts_pb2.UpdateContactRequest(
            id=created.id,
            # A client sending back what it read: output-only fields are ignored.
            contact=contacts_pb2.Contact(
                id=created.id, last_name="Lovelace", version=99, etag="x", tags=["b"]
            ),
        ),
        metadata=tenant.md(),
    )
    assert (updated.first_name, updated.last_name, list(updated.tags)) == (
        "Ada",
        "Lovelace",
        ["b"],
    )
    assert updated.version == 2
    assert events(await service.outbox_data(tenant.id))[-1]["changed_fields"] == [
        "last_name",
        "tags",
    ]


async def test_a_mask_can_clear_fields_and_single_custom_fields(
    service: Running, tenant: Tenant
) -> None:
    await define_field(service, tenant, "tier", contacts_pb2.FIELD_TYPE_STRING)
    await define_field(service, tenant, "score", contacts_pb2.FIELD_TYPE_NUMBER)
    created = await create_contact(
        service,
        tenant,
        first_name="Ada",
        owner_id="u1",
        custom_fields={
            "tier": struct_pb2.Value(string_value="gold"),
            "score": struct_pb2.Value(number_value=1),
        },
    )
    updated = await service.stub.UpdateContact(
        contacts_pb2.UpdateContactRequest(
            id=created.id,
            contact=contacts_pb2.Contact(custom_fields={"score": struct_pb2.Value(number_value=7)}),
            update_mask=["owner_id", "custom_fields.score"],
        ),
        metadata=tenant.md(),
    )
    assert updated.owner_id == ""
    assert dict(updated.custom_fields) == {
        "tier": struct_pb2.Value(string_value="gold"),
        "score": struct_pb2.Value(number_value=7),
    }
    cleared = await service.stub.UpdateContact(
        contacts_pb2.UpdateContactRequest(
            id=created.id, contact=contacts_pb2.Contact(), update_mask=["custom_fields.tier"]
        ),
        metadata=tenant.md(),
    )
    assert list(cleared.custom_fields) == ["score"]
    assert events(await service.outbox_data(tenant.id))[-1]["changed_fields"] == [
        "custom_fields.tier"
    ]


async def test_an_update_that_changes_nothing_writes_nothing(
    service: Running, tenant: Tenant
) -> None:
    created = await create_contact(service, tenant, first_name="Ada", emails=["a@example.com"])
    same = await service.stub.UpdateContact(
        contacts_pb2.UpdateContactRequest(
            id=created.id,
            contact=contacts_pb2.Contact(first_name=" Ada ", emails=["a@example.com"]),
        ),
        metadata=tenant.md(),
    )
    assert same == created
    assert await service.outbox_types(tenant.id) == [f"{CONTACT}.created.v1"]


async def test_a_stale_etag_fails_the_precondition(service: Running, tenant: Tenant) -> None:
    stub = service.stub
    created = await create_contact(service, tenant, first_name="Ada")
    current = await stub.UpdateContact(
        contacts_pb2.UpdateContactRequest(
            id=created.id, contact=contacts_pb2.Contact(first_name="B"), etag=created.etag
        ),
        metadata=tenant.md(),
    )
    stale_update = await failure(
        stub.UpdateContact(
            contacts_pb2.UpdateContactRequest(
                id=created.id, contact=contacts_pb2.Contact(first_name="C"), etag=created.etag
            ),
            metadata=tenant.md(),
        )
    )
    stale_delete = await failure(
        stub.DeleteContact(
            contacts_pb2.DeleteContactRequest(id=created.id, etag=created.etag),
            metadata=tenant.md(),
        )
    )
    for err in (stale_update, stale_delete):
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        # A gRPC caller sends the etag in the request, not in an HTTP header.
        assert "the given etag" in (err.details() or "")
        assert "If-Match" not in (err.details() or "")
    got = await stub.GetContact(contacts_pb2.GetContactRequest(id=created.id), metadata=tenant.md())
    assert got == current
    assert len(await service.outbox_types(tenant.id)) == 2  # created, updated: nothing stale

    await stub.DeleteContact(
        contacts_pb2.DeleteContactRequest(id=created.id, etag=current.etag), metadata=tenant.md()
    )
    assert await service.count("contacts", tenant.id) == 0


async def test_an_event_shows_cleared_fields_as_cleared(service: Running, tenant: Tenant) -> None:
    created = await create_contact(
        service, tenant, first_name="Ada", last_name="Lovelace", tags=["vip", "uk"]
    )
    await service.stub.UpdateContact(
        contacts_pb2.UpdateContactRequest(
            id=created.id, contact=contacts_pb2.Contact(), update_mask=["last_name", "tags"]
        ),
        metadata=tenant.md(),
    )
    updated = events(await service.outbox_data(tenant.id))[-1]
    assert updated["changed_fields"] == ["last_name", "tags"]
    # A partner merging the record must see the clear, not a missing key.
    assert (updated["contact"]["last_name"], updated["contact"]["tags"]) == ("", [])
    assert updated["contact"]["first_name"] == "Ada"
