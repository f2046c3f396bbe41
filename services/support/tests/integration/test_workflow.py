"""The status workflow and what comments do to a ticket: moves the workflow refuses name the
allowed ones, replies set the first response, a customer's reply reopens a solved ticket
within the window and not after it, CSAT once per solved ticket."""

from __future__ import annotations

import grpc

from crm.support.v1 import support_pb2 as pb
from trellis_devstack.testing import failure

from .harness import Platform, Tenant, field_errors, new_ticket, reply, set_status


async def test_a_disallowed_move_is_refused_naming_the_allowed_ones(
    platform: Platform, tenant: Tenant
) -> None:
    made = await new_ticket(platform, tenant)
    await set_status(platform, tenant, made.id, pb.TICKET_STATUS_OPEN)
    err = await failure(set_status(platform, tenant, made.id, pb.TICKET_STATUS_CLOSED))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION  # HTTP 409 at the gateway
    assert err.details() == (
        "the ticket is OPEN and cannot become CLOSED; allowed: PENDING, ON_HOLD, SOLVED"
    )
    await set_status(platform, tenant, made.id, pb.TICKET_STATUS_SOLVED)
    closed = await set_status(platform, tenant, made.id, pb.TICKET_STATUS_CLOSED)
    err = await failure(set_status(platform, tenant, made.id, pb.TICKET_STATUS_OPEN))
    assert err.details() == "the ticket is CLOSED and cannot become OPEN; allowed: none"
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert got == closed  # refusals changed nothing


async def test_each_move_is_one_event_of_its_kind(platform: Platform, tenant: Tenant) -> None:
    made = await new_ticket(platform, tenant)
    for status in (
        pb.TICKET_STATUS_PENDING,
        pb.TICKET_STATUS_PENDING,  # a repeat: nothing happens
        pb.TICKET_STATUS_SOLVED,
        pb.TICKET_STATUS_OPEN,
        pb.TICKET_STATUS_SOLVED,
        pb.TICKET_STATUS_CLOSED,
    ):
        platform.clock.advance(minutes=1)
        await set_status(platform, tenant, made.id, status)
    events = [
        (t.split(".")[3], e["ticket"]["version"], e["ticket"]["status"], e.get("previous_status"))
        for t, e in await platform.db.events(tenant.id)
    ]
    assert events == [
        ("created", "1", "TICKET_STATUS_NEW", None),
        ("status_changed", "2", "TICKET_STATUS_PENDING", "TICKET_STATUS_NEW"),
        ("solved", "3", "TICKET_STATUS_SOLVED", "TICKET_STATUS_PENDING"),
        ("reopened", "4", "TICKET_STATUS_OPEN", None),
        ("solved", "5", "TICKET_STATUS_SOLVED", "TICKET_STATUS_OPEN"),
        ("status_changed", "6", "TICKET_STATUS_CLOSED", "TICKET_STATUS_SOLVED"),
    ]
    statuses = await platform.db.rows(
        "SELECT status FROM ticket_statuses WHERE ticket_id = %s ORDER BY seq", made.id
    )
    assert [s for (s,) in statuses] == ["new", "pending", "solved", "open", "solved", "closed"]


async def test_an_agents_first_public_reply_is_the_first_response(
    platform: Platform, tenant: Tenant
) -> None:
    made = await new_ticket(platform, tenant)
    platform.clock.advance(minutes=3)
    note = await reply(
        platform,
        tenant,
        made.id,
        "Internal: check toner",
        visibility=pb.COMMENT_VISIBILITY_INTERNAL,
    )
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert not got.HasField("first_response_time")
    assert got.version == 1
    platform.clock.advance(minutes=7)
    answer = await reply(platform, tenant, made.id, "We are on it.")
    assert (answer.author_type, answer.author_id) == (pb.AUTHOR_TYPE_AGENT, "key-1")
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert got.first_response_time.ToDatetime() == platform.clock().replace(tzinfo=None)
    assert got.status == pb.TICKET_STATUS_OPEN  # an agent answered a new ticket
    platform.clock.advance(minutes=1)
    await reply(platform, tenant, made.id, "Still on it.")
    again = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert again.first_response_time == got.first_response_time
    listed = await platform.stub.ListComments(
        pb.ListCommentsRequest(ticket_id=made.id, page_size=2), metadata=tenant.md()
    )
    assert [c.id for c in listed.comments] == [note.id, answer.id]  # oldest first
    rest = await platform.stub.ListComments(
        pb.ListCommentsRequest(ticket_id=made.id, page_token=listed.next_page_token),
        metadata=tenant.md(),
    )
    assert [c.body for c in rest.comments] == ["Still on it."]
    kinds = [t for t, _ in await platform.db.events(tenant.id)]
    assert kinds == [
        "crm.support.ticket.created.v1",
        "crm.support.comment.created.v1",
        "crm.support.comment.created.v1",
        "crm.support.ticket.status_changed.v1",
        "crm.support.comment.created.v1",
    ]


async def test_a_customer_reply_moves_a_pending_ticket_and_reopens_a_solved_one(
    platform: Platform, tenant: Tenant
) -> None:
    made = await new_ticket(platform, tenant)
    await set_status(platform, tenant, made.id, pb.TICKET_STATUS_PENDING)
    by_contact = {"author_type": pb.AUTHOR_TYPE_CONTACT}
    theirs = await reply(platform, tenant, made.id, "Here is the log.", **by_contact)
    assert theirs.author_id == made.contact_id
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert got.status == pb.TICKET_STATUS_OPEN
    await set_status(platform, tenant, made.id, pb.TICKET_STATUS_SOLVED)
    platform.clock.advance(days=6, hours=23)  # inside the 7-day window
    await reply(platform, tenant, made.id, "Broken again.", **by_contact)
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert got.status == pb.TICKET_STATUS_OPEN
    assert not got.HasField("solved_time")
    reopened = await platform.db.events(tenant.id, "crm.support.ticket.reopened.v1")
    assert len(reopened) == 1

    await set_status(platform, tenant, made.id, pb.TICKET_STATUS_SOLVED)
    platform.clock.advance(days=7, minutes=1)  # past the window
    err = await failure(reply(platform, tenant, made.id, "And again.", **by_contact))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert field_errors(err) == {
        "ticket_id": "the ticket was solved more than 7 days ago; open a new ticket instead"
    }
    # An agent may still write on it; it stays solved.
    await reply(platform, tenant, made.id, "Glad it works.")
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert got.status == pb.TICKET_STATUS_SOLVED


async def test_a_closed_ticket_takes_no_comments(platform: Platform, tenant: Tenant) -> None:
    made = await new_ticket(platform, tenant)
    await set_status(platform, tenant, made.id, pb.TICKET_STATUS_SOLVED)
    await set_status(platform, tenant, made.id, pb.TICKET_STATUS_CLOSED)
    err = await failure(reply(platform, tenant, made.id))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert field_errors(err) == {"ticket_id": "the ticket is closed; open a new ticket instead"}
    rows = await platform.db.rows("SELECT id FROM comments WHERE ticket_id = %s", made.id)
    assert rows == []


async def test_satisfaction_once_per_solved_ticket(platform: Platform, tenant: Tenant) -> None:
    made = await new_ticket(platform, tenant)
    rate = pb.RateTicketRequest(id=made.id, rating=4, comment=" Quick and kind. ")
    err = await failure(platform.stub.RateTicket(rate, metadata=tenant.md()))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert field_errors(err) == {
        "id": "only a solved or closed ticket can be rated; this one is NEW"
    }
    await set_status(platform, tenant, made.id, pb.TICKET_STATUS_SOLVED)
    rated = await platform.stub.RateTicket(rate, metadata=tenant.md())
    assert (rated.satisfaction.rating, rated.satisfaction.comment) == (4, "Quick and kind.")
    twice = await failure(
        platform.stub.RateTicket(pb.RateTicketRequest(id=made.id, rating=1), metadata=tenant.md())
    )
    assert twice.code() is grpc.StatusCode.ALREADY_EXISTS
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert got.satisfaction.rating == 4
    assert len(await platform.db.events(tenant.id, "crm.support.ticket.rated.v1")) == 1
