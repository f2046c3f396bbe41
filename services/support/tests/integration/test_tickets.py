"""Tickets: opened for a contact the contacts service knows in the caller's tenant, read,
changed field by field, listed; each change one event with the ticket and its version."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2

from crm.contacts.v1 import contacts_pb2
from crm.support.v1 import support_pb2 as pb
from crmkit import idempotency
from trellis_devstack.testing import failure

from .harness import Platform, Tenant, field_errors, new_contact, new_ticket


async def test_a_ticket_is_opened_for_a_contact_of_the_tenant(
    platform: Platform, tenant: Tenant
) -> None:
    company = await platform.contacts_stub.CreateCompany(
        contacts_pb2.CreateCompanyRequest(company=contacts_pb2.Company(name="Acme")),
        metadata=tenant.md(),
    )
    contact = await new_contact(
        platform,
        tenant,
        first_name="Ada",
        last_name="Lovelace",
        emails=["ada@example.com"],
        company_id=company.id,
    )
    made = await new_ticket(
        platform,
        tenant,
        contact.id,
        description="It burns.",
        priority=pb.PRIORITY_HIGH,
        channel=pb.CHANNEL_EMAIL,
        tags=["printer", "printer", "fire"],
        custom_fields={"floor": struct_pb2.Value(number_value=3)},
    )
    assert made.status == pb.TICKET_STATUS_NEW
    assert (made.priority, made.channel) == (pb.PRIORITY_HIGH, pb.CHANNEL_EMAIL)
    assert list(made.tags) == ["printer", "fire"]
    assert made.company_id == company.id  # the contact's company, by default
    assert made.custom_fields["floor"].number_value == 3
    assert (made.contact_name, made.contact_email) == ("Ada Lovelace", "ada@example.com")
    assert made.version == 1
    assert made.etag
    assert made.create_time.ToDatetime() == platform.clock().replace(tzinfo=None)
    assert not made.HasField("sla")  # the tenant has no SLA policy
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert got == made
    events = await platform.db.events(tenant.id, "crm.support.ticket.created.v1")
    assert [e["ticket"]["id"] for _, e in events] == [made.id]
    assert events[0][1]["ticket"]["version"] == "1"
    assert events[0][1]["metadata"]["actor"] == "key-1"


async def test_defaults_and_an_explicit_company(platform: Platform, tenant: Tenant) -> None:
    company = await platform.contacts_stub.CreateCompany(
        contacts_pb2.CreateCompanyRequest(company=contacts_pb2.Company(name="Globex")),
        metadata=tenant.md(),
    )
    made = await new_ticket(platform, tenant, company_id=company.id)
    assert (made.priority, made.channel, made.company_id) == (
        pb.PRIORITY_NORMAL,
        pb.CHANNEL_API,
        company.id,
    )
    err = await failure(
        new_ticket(platform, tenant, company_id="0190a0a0-0000-7000-8000-0000000000cc")
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_errors(err) == {"ticket.company_id": "no such company in this tenant"}


async def test_an_unknown_contact_is_refused_clearly(platform: Platform, tenant: Tenant) -> None:
    err = await failure(new_ticket(platform, tenant, "0190a0a0-0000-7000-8000-000000000001"))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_errors(err) == {"ticket.contact_id": "no such contact in this tenant"}
    err = await failure(new_ticket(platform, tenant, "not-an-id"))
    assert field_errors(err) == {"ticket.contact_id": "no such contact"}
    assert await platform.db.rows("SELECT id FROM tickets WHERE tenant_id = %s", tenant.id) == []


async def test_another_tenants_contact_is_refused_clearly(
    platform: Platform, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await new_contact(platform, other_tenant)
    err = await failure(new_ticket(platform, tenant, theirs.id))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_errors(err) == {"ticket.contact_id": "no such contact in this tenant"}
    assert await platform.db.rows("SELECT id FROM tickets WHERE tenant_id = %s", tenant.id) == []
    assert await platform.db.events(tenant.id) == []


async def test_the_contact_check_needs_contacts_read(platform: Platform, tenant: Tenant) -> None:
    contact = await new_contact(platform, tenant)
    err = await failure(
        platform.stub.CreateTicket(
            pb.CreateTicketRequest(ticket=pb.Ticket(subject="s", contact_id=contact.id)),
            metadata=tenant.md("support:write"),
        )
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "contacts:read" in (err.details() or "")


async def test_a_repeated_create_with_the_same_key_makes_one_ticket(
    platform: Platform, tenant: Tenant
) -> None:
    contact = await new_contact(platform, tenant)
    request = pb.CreateTicketRequest(ticket=pb.Ticket(subject="Once", contact_id=contact.id))
    md = (*tenant.md(), (idempotency.METADATA_KEY, "ticket-1"))
    first = await platform.stub.CreateTicket(request, metadata=md)
    again = await platform.stub.CreateTicket(request, metadata=md)
    assert again.id == first.id
    rows = await platform.db.rows("SELECT id FROM tickets WHERE tenant_id = %s", tenant.id)
    assert len(rows) == 1
    assert len(await platform.db.events(tenant.id, "crm.support.ticket.created.v1")) == 1


async def test_updates_write_the_masked_fields_and_name_the_change(
    platform: Platform, tenant: Tenant
) -> None:
    made = await new_ticket(platform, tenant, tags=["a"])
    stub, md = platform.stub, tenant.md()
    platform.clock.advance(minutes=5)
    changed = await stub.UpdateTicket(
        pb.UpdateTicketRequest(
            id=made.id,
            ticket=pb.Ticket(subject="Printer still on fire", priority=pb.PRIORITY_URGENT),
            update_mask=["subject", "priority"],
            etag=made.etag,
        ),
        metadata=md,
    )
    assert (changed.subject, changed.priority, list(changed.tags)) == (
        "Printer still on fire",
        pb.PRIORITY_URGENT,
        ["a"],
    )
    assert changed.version == 2
    assert changed.etag != made.etag
    assigned = await stub.UpdateTicket(
        pb.UpdateTicketRequest(id=made.id, ticket=pb.Ticket(assignee_id="agent-7", team="Tier 2")),
        metadata=md,
    )
    assert (assigned.assignee_id, assigned.team, assigned.version) == ("agent-7", "Tier 2", 3)
    # The same values again: nothing changes, no version, no event.
    same = await stub.UpdateTicket(
        pb.UpdateTicketRequest(id=made.id, ticket=pb.Ticket(assignee_id="agent-7")), metadata=md
    )
    assert same.version == 3
    # Sending back the ticket as read (output-only fields included) is fine.
    echoed = await stub.UpdateTicket(
        pb.UpdateTicketRequest(id=made.id, ticket=assigned), metadata=md
    )
    assert echoed.version == 3
    stale = await failure(
        stub.UpdateTicket(
            pb.UpdateTicketRequest(id=made.id, ticket=pb.Ticket(team="x"), etag=made.etag),
            metadata=md,
        )
    )
    assert stale.code() is grpc.StatusCode.FAILED_PRECONDITION
    events = await platform.db.events(tenant.id)
    kinds = [(t, e["ticket"]["version"]) for t, e in events if t.startswith("crm.support.ticket")]
    assert kinds == [
        ("crm.support.ticket.created.v1", "1"),
        ("crm.support.ticket.updated.v1", "2"),
        ("crm.support.ticket.assigned.v1", "3"),
    ]
    assert events[1][1]["changed_fields"] == ["subject", "priority"]
    assert events[2][1]["previous_assignee_id"] == ""


async def test_a_ticket_stays_with_its_contact(platform: Platform, tenant: Tenant) -> None:
    made = await new_ticket(platform, tenant)
    other = await new_contact(platform, tenant, first_name="Bob")
    err = await failure(
        platform.stub.UpdateTicket(
            pb.UpdateTicketRequest(id=made.id, ticket=pb.Ticket(contact_id=other.id)),
            metadata=tenant.md(),
        )
    )
    assert field_errors(err) == {
        "ticket.contact_id": "a ticket stays with the contact who opened it"
    }


async def test_lists_filter_and_page_newest_first(platform: Platform, tenant: Tenant) -> None:
    contact = await new_contact(platform, tenant)
    made = [
        await new_ticket(
            platform,
            tenant,
            contact.id,
            subject=f"t{i}",
            priority=pb.PRIORITY_HIGH if i % 2 else pb.PRIORITY_LOW,
            tags=["even"] if i % 2 == 0 else [],
        )
        for i in range(5)
    ]
    stub, md = platform.stub, tenant.md()
    first = await stub.ListTickets(pb.ListTicketsRequest(page_size=2), metadata=md)
    assert [t.subject for t in first.tickets] == ["t4", "t3"]
    second = await stub.ListTickets(
        pb.ListTicketsRequest(page_size=2, page_token=first.next_page_token), metadata=md
    )
    third = await stub.ListTickets(
        pb.ListTicketsRequest(page_size=2, page_token=second.next_page_token), metadata=md
    )
    assert [t.subject for t in (*second.tickets, *third.tickets)] == ["t2", "t1", "t0"]
    assert third.next_page_token == ""
    high = await stub.ListTickets(pb.ListTicketsRequest(priority=pb.PRIORITY_HIGH), metadata=md)
    assert [t.subject for t in high.tickets] == ["t3", "t1"]
    even = await stub.ListTickets(pb.ListTicketsRequest(tag="even"), metadata=md)
    assert [t.subject for t in even.tickets] == ["t4", "t2", "t0"]
    mine = await stub.ListTickets(pb.ListTicketsRequest(contact_id=contact.id), metadata=md)
    assert len(mine.tickets) == 5
    nobody = await stub.ListTickets(pb.ListTicketsRequest(contact_id="nope"), metadata=md)
    assert list(nobody.tickets) == []
    new = await stub.ListTickets(pb.ListTicketsRequest(status=pb.TICKET_STATUS_NEW), metadata=md)
    assert {t.id for t in new.tickets} == {t.id for t in made}
    reused = await failure(
        stub.ListTickets(
            pb.ListTicketsRequest(page_token=first.next_page_token, tag="even"), metadata=md
        )
    )
    assert field_errors(reused) == {
        "page_token": "the page token belongs to a request with other filters"
    }
