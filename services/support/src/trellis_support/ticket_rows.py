"""Tickets as rows: reading them with what their SLA status is worked out from."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from crmkit import db
from crmkit.errors import NotFound
from trellis_support.domain import (
    Channel,
    Priority,
    Satisfaction,
    Ticket,
    TicketFields,
    TicketView,
)
from trellis_support.policy_store import applied_from_json
from trellis_support.sla import ResponseRound, Target
from trellis_support.workflow import Status

COLUMNS = """
    t.id, t.subject, t.description, t.contact_id, t.company_id, t.priority, t.status,
    t.channel, t.assignee_id, t.team, t.tags, t.custom_fields, t.sla_policy,
    t.first_response_at, t.solved_at, t.next_response_round, t.next_response_start,
    t.next_response_done, t.csat_rating, t.csat_comment, t.csat_time,
    t.version, t.etag, t.create_time, t.update_time,
    coalesce(c.name, '') AS contact_name, coalesce(c.email, '') AS contact_email
"""
# The contact's facts join in where support has them (from the contacts service's events).
FROM = """
    tickets t LEFT JOIN contact_facts c
      ON c.tenant_id = t.tenant_id AND c.contact_id = t.contact_id AND NOT c.deleted
"""


def ticket(row: dict[str, Any]) -> Ticket:
    policy = row["sla_policy"]
    rnd = row["next_response_round"]
    return Ticket(
        id=str(row["id"]),
        fields=TicketFields(
            subject=row["subject"],
            description=row["description"],
            contact_id=str(row["contact_id"]),
            company_id=str(row["company_id"] or ""),
            priority=Priority(row["priority"]),
            channel=Channel(row["channel"]),
            assignee_id=row["assignee_id"],
            team=row["team"],
            tags=tuple(row["tags"]),
            custom_fields=row["custom_fields"],
        ),
        status=Status(row["status"]),
        policy=applied_from_json(policy) if policy is not None else None,
        first_response=row["first_response_at"],
        solved=row["solved_at"],
        next_response=(
            ResponseRound(rnd, row["next_response_start"], row["next_response_done"])
            if rnd
            else None
        ),
        satisfaction=(
            Satisfaction(row["csat_rating"], row["csat_comment"], row["csat_time"])
            if row["csat_rating"] is not None
            else None
        ),
        contact_name=row["contact_name"],
        contact_email=row["contact_email"],
        version=row["version"],
        etag=row["etag"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


async def views(conn: db.Conn, tenant_id: str, tickets: Sequence[Ticket]) -> list[TicketView]:
    """The tickets with their status histories and fired breaches (two queries for all)."""
    ids = [t.id for t in tickets]
    statuses: dict[str, list[tuple[datetime, Status]]] = defaultdict(list)
    for r in await db.fetch_all(
        conn,
        "SELECT ticket_id, status, at FROM ticket_statuses"
        " WHERE tenant_id = %s AND ticket_id = ANY(%s::uuid[]) ORDER BY ticket_id, seq",
        (tenant_id, ids),
    ):
        statuses[str(r["ticket_id"])].append((r["at"], Status(r["status"])))
    fired: dict[str, set[tuple[Target, int]]] = defaultdict(set)
    for r in await db.fetch_all(
        conn,
        "SELECT ticket_id, target, cycle FROM sla_timers WHERE tenant_id = %s"
        " AND ticket_id = ANY(%s::uuid[]) AND kind = 'breach' AND fired_at IS NOT NULL",
        (tenant_id, ids),
    ):
        fired[str(r["ticket_id"])].add((Target(r["target"]), r["cycle"]))
    return [TicketView(t, tuple(statuses[t.id]), frozenset(fired[t.id])) for t in tickets]


async def load(conn: db.Conn, tenant_id: str, ticket_id: str, lock: str = "") -> TicketView:
    """One ticket; `lock` is e.g. "FOR NO KEY UPDATE OF t" for a change."""
    rows = await db.fetch_all(
        conn,
        f"SELECT {COLUMNS} FROM {FROM} WHERE t.tenant_id = %s AND t.id = %s {lock}",
        (tenant_id, ticket_id),
    )
    if not rows:
        raise NotFound("ticket", ticket_id)
    return (await views(conn, tenant_id, [ticket(rows[0])]))[0]
