"""The contact facts support shows on tickets follow the contacts service's events: a change of
name or address shows on the ticket, a deleted contact's facts are gone, and a late event
never overwrites a newer fact."""

from __future__ import annotations

from crm.contacts.v1 import contacts_pb2
from crm.support.v1 import support_pb2 as pb
from crmkit import db
from crmkit.consumer import Event
from trellis_devstack.testing import eventually
from trellis_support.events import apply_contact_event

from .harness import Platform, Tenant, new_contact, new_ticket


async def test_tickets_show_the_contact_as_its_events_tell(
    platform: Platform, tenant: Tenant
) -> None:
    contact = await new_contact(platform, tenant, first_name="Ada", emails=["ada@example.com"])
    made = await new_ticket(platform, tenant, contact.id)
    assert made.contact_name == "Ada"
    await platform.contacts_stub.UpdateContact(
        contacts_pb2.UpdateContactRequest(
            id=contact.id,
            contact=contacts_pb2.Contact(last_name="King", emails=["countess@example.com"]),
        ),
        metadata=tenant.md(),
    )

    async def renamed() -> pb.Ticket | None:
        got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
        return got if got.contact_name == "Ada King" else None

    got = await eventually(renamed, "the contact's new name on the ticket", within=20)
    assert got.contact_email == "countess@example.com"
    assert got.version == made.version  # the ticket itself did not change

    await platform.contacts_stub.DeleteContact(
        contacts_pb2.DeleteContactRequest(id=contact.id), metadata=tenant.md()
    )

    async def forgotten() -> bool:
        got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
        return (got.contact_name, got.contact_email) == ("", "")

    await eventually(forgotten, "the deleted contact's facts gone from the ticket", within=20)


async def test_a_late_event_changes_nothing(platform: Platform, tenant: Tenant) -> None:
    contact = await new_contact(platform, tenant, first_name="Grace")
    made = await new_ticket(platform, tenant, contact.id)  # knows version 1 from GetContact
    stale = Event(
        id="late-1",
        type="crm.contacts.contact.created.v1",
        source="/trellis/contacts",
        subject=contact.id,
        tenant_id=tenant.id,
        record_version=0,
        time="",
        data={"contact": {"first_name": "Old name"}},
        nats_subject="",
        headers={},
    )
    pool = await db.open_pool(platform.app_url, name="late-event", min_size=1, max_size=1)
    try:
        async with db.tenant_tx(pool, tenant.id) as conn:
            await apply_contact_event(stale, conn)
    finally:
        await pool.close()
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert got.contact_name == "Grace"
