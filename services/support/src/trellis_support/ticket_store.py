"""SQL of tickets, comments and ratings: one transaction per use case, with its events and its
SLA timers written inside it.

Every function opens a tenant transaction (crmkit.db.tenant_tx), so row-level security scopes
each statement to the caller's tenant; the explicit `tenant_id = ...` predicates are there for
the planner. A change locks the ticket first (then, in timers.sync, its timers), so concurrent
changes of one ticket queue up instead of interleaving. Times come from the caller (the
service's clock), never from the database's now().
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from psycopg.types.json import Jsonb

from crm.support.v1 import events_pb2
from crmkit import db, updates
from crmkit.context import Identity
from crmkit.errors import Duplicate, FailedPrecondition, NotFound, check_etag
from crmkit.ids import new_id
from trellis_support import domain, mapping, policies, policy_store, ticket_rows, timers
from trellis_support.domain import (
    AuthorType,
    Comment,
    CommentDraft,
    ContactFacts,
    Satisfaction,
    Ticket,
    TicketFields,
    TicketView,
    Visibility,
)
from trellis_support.events import upsert_contact_facts
from trellis_support.rows import event, known_id, metadata
from trellis_support.sla import AppliedPolicy, ResponseRound
from trellis_support.timers import Verdicts
from trellis_support.workflow import DONE, Move, Status, check_transition


@dataclass(frozen=True)
class Written:
    """A ticket after a change, and the SLA verdicts the change made (for the metrics)."""

    view: TicketView
    verdicts: Verdicts


@dataclass(frozen=True)
class TicketFilter:
    """ListTickets' filters, combined with AND; empty values do not filter."""

    status: Status | None = None
    priority: domain.Priority | None = None
    assignee_id: str = ""
    team: str = ""
    contact_id: str = ""
    tag: str = ""


_INSERT = """
INSERT INTO tickets (tenant_id, id, subject, description, contact_id, company_id, priority,
                     status, channel, assignee_id, team, tags, custom_fields, sla_policy,
                     create_time, update_time)
VALUES (%(tenant_id)s, %(id)s, %(subject)s, %(description)s, %(contact_id)s, %(company_id)s,
        %(priority)s, 'new', %(channel)s, %(assignee_id)s, %(team)s, %(tags)s,
        %(custom_fields)s, %(sla_policy)s, %(now)s, %(now)s)
"""
_SAVE = """
UPDATE tickets SET subject = %(subject)s, description = %(description)s,
    company_id = %(company_id)s, priority = %(priority)s, channel = %(channel)s,
    assignee_id = %(assignee_id)s, team = %(team)s, tags = %(tags)s,
    custom_fields = %(custom_fields)s, sla_policy = %(sla_policy)s, status = %(status)s,
    solved_at = %(solved_at)s, first_response_at = %(first_response_at)s,
    next_response_round = %(round)s, next_response_start = %(round_start)s,
    next_response_done = %(round_done)s, csat_rating = %(csat_rating)s,
    csat_comment = %(csat_comment)s, csat_time = %(csat_time)s,
    version = version + 1, etag = new_etag(), update_time = %(now)s
WHERE tenant_id = %(tenant_id)s AND id = %(id)s
RETURNING version, etag, update_time
"""
_STATUS = """
INSERT INTO ticket_statuses (tenant_id, ticket_id, seq, status, at) VALUES (%s, %s, %s, %s, %s)
"""
_LOCK = "FOR NO KEY UPDATE OF t"


def _field_params(f: TicketFields, policy: AppliedPolicy | None) -> dict[str, Any]:
    return {
        "subject": f.subject,
        "description": f.description,
        "contact_id": f.contact_id,
        "company_id": f.company_id or None,
        "priority": f.priority.value if f.priority else None,
        "channel": f.channel.value if f.channel else None,
        "assignee_id": f.assignee_id,
        "team": f.team,
        "tags": list(f.tags),
        "custom_fields": Jsonb(dict(f.custom_fields)),
        "sla_policy": Jsonb(policy_store.applied_json(policy)) if policy is not None else None,
    }


async def _save(conn: db.Conn, tenant_id: str, t: Ticket, now: datetime) -> Ticket:
    """Write the ticket's new state as its next version."""
    rnd = t.next_response
    sat = t.satisfaction
    row = await db.fetch_one(
        conn,
        _SAVE,
        {
            "tenant_id": tenant_id,
            "id": t.id,
            "now": now,
            **_field_params(t.fields, t.policy),
            "status": t.status.value,
            "solved_at": t.solved,
            "first_response_at": t.first_response,
            "round": rnd.number if rnd else 0,
            "round_start": rnd.start if rnd else None,
            "round_done": rnd.done if rnd else None,
            "csat_rating": sat.rating if sat else None,
            "csat_comment": sat.comment if sat else None,
            "csat_time": sat.at if sat else None,
        },
    )
    assert row is not None
    return replace(t, version=row["version"], etag=row["etag"], update_time=row["update_time"])


async def _set_status(
    conn: db.Conn, tenant_id: str, view: TicketView, status: Status, now: datetime
) -> tuple[tuple[datetime, Status], ...]:
    await conn.execute(_STATUS, (tenant_id, view.ticket.id, len(view.statuses) + 1, status, now))
    return (*view.statuses, (now, status))


async def _match(conn: db.Conn, tenant_id: str, fields: TicketFields) -> AppliedPolicy | None:
    found = policies.first_match(await policy_store.in_matching_order(conn, tenant_id), fields)
    return policies.applied(found) if found is not None else None


async def _ticket_event(
    conn: db.Conn,
    ident: Identity,
    view: TicketView,
    now: datetime,
    make: Callable[..., Message],
    **extra: Any,
) -> None:
    """Write one of the ticket events (`make`, an events_pb2 class) of `view`."""
    message = make(
        metadata=metadata(ident.tenant_id, ident.principal, now),
        ticket=mapping.ticket_to_proto(view, now),
        **extra,
    )
    await event(conn, ident.tenant_id, view.ticket.id, view.ticket.version, message)


# --- tickets ----------------------------------------------------------------------------------


async def create(
    pool: db.Pool, ident: Identity, fields: TicketFields, contact: ContactFacts, now: datetime
) -> Written:
    tenant_id = ident.tenant_id
    ticket_id = new_id()
    async with db.tenant_tx(pool, tenant_id) as conn:
        await upsert_contact_facts(conn, tenant_id, contact)
        policy = await _match(conn, tenant_id, fields)
        await conn.execute(
            _INSERT,
            {"tenant_id": tenant_id, "id": ticket_id, "now": now, **_field_params(fields, policy)},
        )
        await conn.execute(_STATUS, (tenant_id, ticket_id, 1, Status.NEW, now))
        view = await ticket_rows.load(conn, tenant_id, ticket_id)
        await _ticket_event(conn, ident, view, now, events_pb2.TicketCreated)
        verdicts = await timers.sync(conn, tenant_id, view, [], now)
    return Written(view, verdicts)


async def get(pool: db.Pool, tenant_id: str, ticket_id: str) -> TicketView:
    known = known_id("ticket", ticket_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await ticket_rows.load(conn, tenant_id, known)


async def subject_and_description(pool: db.Pool, tenant_id: str, ticket_id: str) -> str:
    """A ticket's subject and description as one text, without the rest of its view."""
    known = known_id("ticket", ticket_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        row = await db.fetch_one(
            conn,
            "SELECT subject, description FROM tickets WHERE tenant_id = %s AND id = %s",
            (tenant_id, known),
        )
    if row is None:
        raise NotFound("ticket", known)
    return f"{row['subject']}\n{row['description']}"


async def update(
    pool: db.Pool,
    ident: Identity,
    ticket_id: str,
    draft: TicketFields,
    paths: Sequence[str],
    etag: str,
    now: datetime,
) -> Written:
    tenant_id = ident.tenant_id
    known = known_id("ticket", ticket_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        view = await ticket_rows.load(conn, tenant_id, known, _LOCK)
        check_etag("ticket", view.ticket.etag, etag)
        current = view.ticket
        merged = domain.finish_update(current.fields, updates.merge(current.fields, draft, paths))
        changed = updates.changed_fields(current.fields, merged)
        if not changed:
            return Written(view, Verdicts())
        before = view.sla(now)
        top = updates.top_level(changed)
        policy = (
            await _match(conn, tenant_id, merged) if top & domain.MATCHED_ON else current.policy
        )
        saved = await _save(conn, tenant_id, replace(current, fields=merged, policy=policy), now)
        view = replace(view, ticket=saved)
        if top <= domain.ASSIGNMENT:
            await _ticket_event(
                conn,
                ident,
                view,
                now,
                events_pb2.TicketAssigned,
                previous_assignee_id=current.fields.assignee_id,
                previous_team=current.fields.team,
            )
        else:
            await _ticket_event(
                conn, ident, view, now, events_pb2.TicketUpdated, changed_fields=changed
            )
        verdicts = await timers.sync(conn, tenant_id, view, before, now)
    return Written(view, verdicts)


async def _move(
    conn: db.Conn, ident: Identity, view: TicketView, target: Status, move: Move, now: datetime
) -> TicketView:
    """Save the ticket in its new status and write the event of the move."""
    current = view.ticket
    solved = now if target is Status.SOLVED else (current.solved if target in DONE else None)
    statuses = await _set_status(conn, ident.tenant_id, view, target, now)
    saved = await _save(conn, ident.tenant_id, replace(current, status=target, solved=solved), now)
    view = replace(view, ticket=saved, statuses=statuses)
    previous = mapping.STATUS.to_proto(current.status)
    if move is Move.SOLVED:
        await _ticket_event(
            conn, ident, view, now, events_pb2.TicketSolved, previous_status=previous
        )
    elif move is Move.REOPENED:
        await _ticket_event(conn, ident, view, now, events_pb2.TicketReopened)
    else:
        await _ticket_event(
            conn, ident, view, now, events_pb2.TicketStatusChanged, previous_status=previous
        )
    return view


async def change_status(
    pool: db.Pool, ident: Identity, ticket_id: str, target: Status, etag: str, now: datetime
) -> Written:
    tenant_id = ident.tenant_id
    known = known_id("ticket", ticket_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        view = await ticket_rows.load(conn, tenant_id, known, _LOCK)
        check_etag("ticket", view.ticket.etag, etag)
        if view.ticket.status is target:
            return Written(view, Verdicts())  # already there: a repeat changes nothing
        move = check_transition(view.ticket.status, target)
        before = view.sla(now)
        view = await _move(conn, ident, view, target, move, now)
        verdicts = await timers.sync(conn, tenant_id, view, before, now)
    return Written(view, verdicts)


async def rate(
    pool: db.Pool, ident: Identity, ticket_id: str, rating: Satisfaction, now: datetime
) -> Written:
    tenant_id = ident.tenant_id
    known = known_id("ticket", ticket_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        view = await ticket_rows.load(conn, tenant_id, known, _LOCK)
        if view.ticket.status not in DONE:
            raise FailedPrecondition(
                f"only a solved or closed ticket can be rated; this one is {view.ticket.status.name}",
                "id",
            )
        if view.ticket.satisfaction is not None:
            raise Duplicate("this ticket has been rated already", "rating")
        saved = await _save(conn, tenant_id, replace(view.ticket, satisfaction=rating), now)
        view = replace(view, ticket=saved)
        await _ticket_event(conn, ident, view, now, events_pb2.TicketRated)
    return Written(view, Verdicts())


async def page(
    pool: db.Pool, tenant_id: str, filters: TicketFilter, after: str | None, limit: int
) -> list[TicketView]:
    where = ["t.tenant_id = %(tenant_id)s"]
    params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit}
    if after is not None:
        where.append("t.id < %(after)s")
        params["after"] = after
    for name in ("assignee_id", "team", "contact_id"):
        if getattr(filters, name):
            where.append(f"t.{name} = %({name})s")
            params[name] = getattr(filters, name)
    if filters.status is not None:
        where.append("t.status = %(status)s")
        params["status"] = filters.status.value
    if filters.priority is not None:
        where.append("t.priority = %(priority)s")
        params["priority"] = filters.priority.value
    if filters.tag:
        where.append("t.tags @> ARRAY[%(tag)s]::text[]")
        params["tag"] = filters.tag
    query = (
        f"SELECT {ticket_rows.COLUMNS} FROM {ticket_rows.FROM}"
        f" WHERE {' AND '.join(where)} ORDER BY t.id DESC LIMIT %(limit)s"
    )
    async with db.tenant_tx(pool, tenant_id) as conn:
        found = [ticket_rows.ticket(r) for r in await db.fetch_all(conn, query, params)]
        return await ticket_rows.views(conn, tenant_id, found) if found else []


# --- comments ---------------------------------------------------------------------------------

_COMMENT_COLUMNS = "id, ticket_id, body, visibility, author_type, author_id, create_time"


def _comment(row: dict[str, Any]) -> Comment:
    return Comment(
        id=str(row["id"]),
        ticket_id=str(row["ticket_id"]),
        body=row["body"],
        visibility=Visibility(row["visibility"]),
        author_type=AuthorType(row["author_type"]),
        author_id=row["author_id"],
        create_time=row["create_time"],
    )


def _after_comment(
    t: Ticket, draft: CommentDraft, now: datetime, reopen_window: timedelta
) -> tuple[Ticket, Status | None]:
    """The ticket as a comment leaves it, and the status it moves to (if any)."""
    if t.status is Status.CLOSED:
        raise FailedPrecondition("the ticket is closed; open a new ticket instead", "ticket_id")
    public = draft.visibility is Visibility.PUBLIC
    status: Status | None = None
    if draft.author_type is AuthorType.CONTACT:
        if t.status is Status.SOLVED:
            if t.solved is not None and now - t.solved > reopen_window:
                raise FailedPrecondition(
                    f"the ticket was solved more than {reopen_window.days} days ago;"
                    " open a new ticket instead",
                    "ticket_id",
                )
            status = Status.OPEN  # the customer is not satisfied after all
        elif t.status is Status.PENDING:
            status = Status.OPEN  # the answer the team was waiting for
        rnd = t.next_response
        if t.first_response is not None and (rnd is None or rnd.done is not None):
            number = rnd.number + 1 if rnd else 1
            t = replace(t, next_response=ResponseRound(number, now, None))
    elif public:
        if t.first_response is None:
            t = replace(t, first_response=now)
        if t.next_response is not None and t.next_response.done is None:
            t = replace(t, next_response=replace(t.next_response, done=now))
        if t.status is Status.NEW:
            status = Status.OPEN
    return t, status


async def add_comment(
    pool: db.Pool,
    ident: Identity,
    ticket_id: str,
    draft: CommentDraft,
    now: datetime,
    reopen_window: timedelta,
) -> tuple[Comment, Written]:
    tenant_id = ident.tenant_id
    known = known_id("ticket", ticket_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        view = await ticket_rows.load(conn, tenant_id, known, _LOCK)
        current = view.ticket
        draft = domain.normalize_comment(draft, ident.principal, current.fields.contact_id)
        changed, status = _after_comment(current, draft, now, reopen_window)
        row = await db.fetch_one(
            conn,
            f"""
            INSERT INTO comments (tenant_id, id, ticket_id, body, visibility, author_type,
                                  author_id, create_time)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            RETURNING {_COMMENT_COLUMNS}
            """,
            (
                tenant_id,
                new_id(),
                known,
                draft.body,
                draft.visibility,
                draft.author_type,
                draft.author_id,
                now,
            ),
        )
        assert row is not None
        comment = _comment(row)
        await event(
            conn,
            tenant_id,
            comment.id,
            1,
            events_pb2.CommentCreated(
                metadata=metadata(tenant_id, ident.principal, now),
                comment=mapping.comment_to_proto(comment),
            ),
        )
        if changed == current and status is None:
            return comment, Written(view, Verdicts())
        before = view.sla(now)
        view = replace(view, ticket=changed)
        if status is not None:
            view = await _move(
                conn, ident, view, status, check_transition(current.status, status), now
            )
        else:
            saved = await _save(conn, tenant_id, changed, now)
            view = replace(view, ticket=saved)
            fields_changed = [
                name
                for name, a, b in (
                    ("first_response_time", current.first_response, changed.first_response),
                    ("sla", current.next_response, changed.next_response),
                )
                if a != b
            ]
            await _ticket_event(
                conn, ident, view, now, events_pb2.TicketUpdated, changed_fields=fields_changed
            )
        verdicts = await timers.sync(conn, tenant_id, view, before, now)
    return comment, Written(view, verdicts)


async def comments_page(
    pool: db.Pool, tenant_id: str, ticket_id: str, after: str | None, limit: int
) -> list[Comment]:
    known = known_id("ticket", ticket_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        if (
            await db.fetch_one(
                conn,
                "SELECT 1 AS found FROM tickets WHERE tenant_id = %s AND id = %s",
                (tenant_id, known),
            )
            is None
        ):
            raise NotFound("ticket", known)
        where = "tenant_id = %s AND ticket_id = %s"
        params: list[Any] = [tenant_id, known]
        if after is not None:
            where += " AND id > %s"
            params.append(after)
        rows = await db.fetch_all(
            conn,
            f"SELECT {_COMMENT_COLUMNS} FROM comments WHERE {where} ORDER BY id LIMIT %s",
            (*params, limit),
        )
    return [_comment(r) for r in rows]
