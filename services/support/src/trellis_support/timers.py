"""SLA timers: each ticket's warning and breach instants kept in the database, and the worker
that fires them when they fall due.

Every change of a ticket recomputes its timers in the change's transaction (a paused clock
has none due). The worker of each replica finds the tenants with timers due, and in one
transaction per tenant claims due timers with FOR UPDATE SKIP LOCKED, re-judges each against
the ticket as it is now, sets `fired_at` and writes the event to the outbox. The primary key
(ticket, target, round, kind) and `fired_at` make every warning and breach go out at most
once, whatever restarts or replicas do; a change that completes a target late fires its
breach in its own transaction, so every breach goes out at least once too.

Lock order: writers lock the ticket, then its timers; the worker locks timers, then tries
the ticket with SKIP LOCKED and leaves the timers of a ticket being changed to the writer
(which recomputes them) or to its next round. Neither waits for the other in a cycle.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from crm.support.v1 import events_pb2
from crmkit import db
from crmkit.clock import Clock
from crmkit.periodic import Periodic
from trellis_support import mapping, metrics, ticket_rows
from trellis_support.domain import TicketView
from trellis_support.rows import event, metadata
from trellis_support.sla import Target, TargetState, TargetStatus

log = logging.getLogger(__name__)

SERVICE_ACTOR = "service:support"
WARNING, BREACH = "warning", "breach"


@dataclass
class Verdicts:
    """Targets judged by a change or a worker round: what the SLA metrics count."""

    met: int = 0
    breached: list[Target] = field(default_factory=list)
    warned: int = 0

    def count(self) -> None:
        """Into the metrics; call once the transaction that made them has committed."""
        metrics.count_verdicts(self.met, self.breached)


_CLEAR = """
UPDATE sla_timers SET due_at = NULL
WHERE tenant_id = %s AND ticket_id = %s AND fired_at IS NULL AND due_at IS NOT NULL
"""
_UPSERT = """
INSERT INTO sla_timers (tenant_id, ticket_id, target, cycle, kind, due_at)
SELECT %(tenant_id)s, %(ticket_id)s, t.target, t.cycle, t.kind, t.due_at
FROM unnest(%(targets)s::text[], %(cycles)s::int[], %(kinds)s::text[], %(dues)s::timestamptz[])
     AS t(target, cycle, kind, due_at)
ON CONFLICT (tenant_id, ticket_id, target, cycle, kind)
DO UPDATE SET due_at = EXCLUDED.due_at WHERE sla_timers.fired_at IS NULL
"""
_FIRE = """
UPDATE sla_timers SET fired_at = %s, due_at = NULL
WHERE tenant_id = %s AND ticket_id = %s AND target = %s AND cycle = %s AND kind = %s
  AND fired_at IS NULL
RETURNING 1 AS fired
"""


def _dues(status: TargetStatus) -> list[tuple[str, datetime | None]]:
    if status.completed_at is not None:
        return [(WARNING, None), (BREACH, None)]
    return [(WARNING, status.warning_at), (BREACH, status.due_at)]


async def fire(
    conn: db.Conn, tenant_id: str, view: TicketView, status: TargetStatus, kind: str, now: datetime
) -> TicketView | None:
    """Mark the timer fired and write its event; None if it had fired already. Returns the
    view with the breach recorded."""
    row = await db.fetch_one(
        conn, _FIRE, (now, tenant_id, view.ticket.id, status.target.value, status.cycle, kind)
    )
    if row is None:
        return None
    if kind == BREACH:
        view = replace(view, fired_breaches=view.fired_breaches | {status.key})
    ticket = mapping.ticket_to_proto(view, now)
    meta = metadata(tenant_id, SERVICE_ACTOR, now)
    target = mapping.target_to_proto(status)
    message = (
        events_pb2.TicketSlaBreached(metadata=meta, ticket=ticket, target=target)
        if kind == BREACH
        else events_pb2.TicketSlaWarning(metadata=meta, ticket=ticket, target=target)
    )
    await event(conn, tenant_id, view.ticket.id, view.ticket.version, message)
    return view


async def sync(
    conn: db.Conn,
    tenant_id: str,
    view: TicketView,
    before: Sequence[TargetStatus],
    now: datetime,
) -> Verdicts:
    """Recompute a changed ticket's timers (its row is locked by the caller), fire the breach
    of a target the change found passed, and say which targets the change judged."""
    verdicts = Verdicts()
    after = view.sla(now)
    await conn.execute(_CLEAR, (tenant_id, view.ticket.id))
    rows = [(s.target.value, s.cycle, kind, due) for s in after for kind, due in _dues(s)]
    if rows:
        targets, cycles, kinds, dues = (list(column) for column in zip(*rows, strict=True))
        await conn.execute(
            _UPSERT,
            {
                "tenant_id": tenant_id,
                "ticket_id": view.ticket.id,
                "targets": targets,
                "cycles": cycles,
                "kinds": kinds,
                "dues": dues,
            },
        )
    judged_before = {s.key for s in before if s.state in (TargetState.MET, TargetState.BREACHED)}
    for status in after:
        if status.state is TargetState.BREACHED and status.key not in view.fired_breaches:
            fired = await fire(conn, tenant_id, view, status, BREACH, now)
            if fired is not None:
                view = fired
                verdicts.breached.append(status.target)
        elif status.state is TargetState.MET and status.key not in judged_before:
            verdicts.met += 1
    return verdicts


# --- the worker -------------------------------------------------------------------------------

_TENANTS = "SELECT tenant_id FROM support_tenants_with_due_timers(%s, %s)"
_CLAIM = """
SELECT ticket_id, target, cycle, kind FROM sla_timers
WHERE tenant_id = %s AND fired_at IS NULL AND due_at <= %s
ORDER BY due_at
LIMIT %s
FOR UPDATE SKIP LOCKED
"""
_LOCK_TICKET = """
SELECT 1 AS locked FROM tickets WHERE tenant_id = %s AND id = %s FOR NO KEY UPDATE SKIP LOCKED
"""
_RESET = """
UPDATE sla_timers SET due_at = %s
WHERE tenant_id = %s AND ticket_id = %s AND target = %s AND cycle = %s AND kind = %s
"""


async def _fire_due_of_ticket(
    conn: db.Conn,
    tenant_id: str,
    ticket_id: str,
    timers: list[tuple[Target, int, str]],
    now: datetime,
    verdicts: Verdicts,
) -> None:
    if await db.fetch_one(conn, _LOCK_TICKET, (tenant_id, ticket_id)) is None:
        return  # being changed: the writer recomputes its timers; any still due wait a round
    view = await ticket_rows.load(conn, tenant_id, ticket_id)
    statuses = {s.key: s for s in view.sla(now)}
    for target, cycle, kind in timers:
        status = statuses.get((target, cycle))
        running = status is not None and status.completed_at is None
        passed = (
            running
            and status is not None
            and (
                status.state is TargetState.BREACHED
                if kind == BREACH
                else status.warning_at is not None and status.warning_at <= now
            )
        )
        if passed and status is not None:
            fired = await fire(conn, tenant_id, view, status, kind, now)
            if fired is not None:
                view = fired
                if kind == BREACH:
                    verdicts.breached.append(target)
                else:
                    verdicts.warned += 1
            continue
        # Not due after all (the ticket changed since its timers were written): put the timer
        # where the ticket's clock says it belongs now.
        due = dict(_dues(status)).get(kind) if status is not None else None
        await conn.execute(_RESET, (due, tenant_id, ticket_id, target.value, cycle, kind))


async def _fire_due_of_tenant(pool: db.Pool, tenant_id: str, now: datetime, batch: int) -> Verdicts:
    verdicts = Verdicts()
    async with db.tenant_tx(pool, tenant_id) as conn:
        due: dict[str, list[tuple[Target, int, str]]] = defaultdict(list)
        for r in await db.fetch_all(conn, _CLAIM, (tenant_id, now, batch)):
            due[str(r["ticket_id"])].append((Target(r["target"]), r["cycle"], r["kind"]))
        for ticket_id, timers in due.items():
            await _fire_due_of_ticket(conn, tenant_id, ticket_id, timers, now, verdicts)
    verdicts.count()
    return verdicts


async def fire_due(pool: db.Pool, clock: Clock, batch: int = 200, tenants: int = 100) -> Verdicts:
    """One round: every warning and breach due by now, of up to `tenants` tenants."""
    now = clock()
    async with pool.connection() as conn:
        rows = await db.fetch_all(conn, _TENANTS, (now, tenants))
    total = Verdicts()
    for r in rows:
        done = await _fire_due_of_tenant(pool, str(r["tenant_id"]), now, batch)
        total.breached += done.breached
        total.warned += done.warned
    if total.breached or total.warned:
        log.info(
            "sla timers fired",
            extra={"breaches": len(total.breached), "warnings": total.warned},
        )
    return total


def worker(pool: db.Pool, clock: Clock, interval: float) -> Periodic:
    return Periodic("sla timers", interval, lambda: fire_due(pool, clock))
