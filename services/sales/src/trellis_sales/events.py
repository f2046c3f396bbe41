"""Consumers of other services' events: the contact projection and engagement scoring.

The contacts consumer keeps sales' copy of contacts and companies (crmkit.projections applies
only newer versions, so repeats and late arrivals change nothing), unlinks deleted ones from
leads and deals, and re-scores the leads a contact change touches. Every consumed event is
also offered to the tenant's engagement rules, which are generic: a rule names a CloudEvents
type, conditions on the event's data, and where in the data the contact id is. The chassis's
inbox runs each event's effect once; the engagement_hits key makes an event count once per
lead and rule even when it reaches sales through two consumers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format

from crm.contacts.v1 import contacts_pb2
from crm.contacts.v1 import events_pb2 as contact_events
from crm.sales.v1 import events_pb2
from crmkit import db, projections
from crmkit.clock import Clock
from crmkit.consumer import Event, Handler
from crmkit.context import Identity
from crmkit.ids import canonical_uuid
from trellis_sales import deals, leads, mapping, scoring
from trellis_sales.store import event, metadata

CONTACT_SUBJECTS = ["crm.events.*.contacts.contact.>", "crm.events.*.contacts.company.>"]
ACTOR = "sales"  # who sales' own changes (unlinking a deleted contact) are made by

_CONTACT = "crm.contacts.contact."
_COMPANY = "crm.contacts.company."


def _message(data: dict[str, Any], kind: type[Any]) -> Any:
    # Unknown fields are what a newer producer adds: ignored, as the proto3 JSON rules allow.
    return json_format.ParseDict(data, kind(), ignore_unknown_fields=True)


def _occurred(event_: Event, now: datetime) -> datetime:
    try:
        return datetime.fromisoformat(event_.time)
    except ValueError:
        return now


# --- engagement -------------------------------------------------------------------------------


async def engage(conn: db.Conn, event_: Event, now: datetime) -> None:
    """Count the event for the leads of its contact under each engagement rule it matches."""
    rows = await db.fetch_all(
        conn,
        "SELECT id, label, kind, points, conditions, event_type, contact_field, half_life_days,"
        " version, etag, create_time, update_time FROM scoring_rules"
        " WHERE tenant_id = %s AND kind = 'engagement' AND event_type = %s",
        (event_.tenant_id, event_.type),
    )
    touched: set[str] = set()
    for rule in map(leads.rule, rows):
        if not scoring.matches(rule.fields.conditions, event_.data):
            continue
        contact_id = canonical_uuid(str(scoring.resolve(event_.data, rule.fields.contact_field)))
        if contact_id is None:
            continue
        for lead_id in await leads.leads_of_contact(conn, event_.tenant_id, contact_id):
            cur = await conn.execute(
                "INSERT INTO engagement_hits (tenant_id, lead_id, rule_id, event_id, occurred_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (event_.tenant_id, lead_id, rule.meta.id, event_.id, _occurred(event_, now)),
            )
            if cur.rowcount:
                touched.add(lead_id)
    await leads.rescore(conn, event_.tenant_id, sorted(touched), now, "event")


def engagement_handler(clock: Clock) -> Handler:
    async def handle(event_: Event, conn: db.Conn) -> None:
        await engage(conn, event_, clock())

    return handle


# --- the contact projection -------------------------------------------------------------------


async def _upsert_contact(conn: db.Conn, tenant_id: str, contact_id: str, contact: Any) -> None:
    """The summary of `contact_id` (the event's subject: the record the event is about)."""
    emails = list(contact.emails)
    await conn.execute(
        """
        INSERT INTO contact_summaries AS cs (tenant_id, id, first_name, last_name, emails,
            email_keys, company_id, lifecycle_stage, tags, known, deleted)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, true, false)
        ON CONFLICT (tenant_id, id) DO UPDATE SET first_name = EXCLUDED.first_name,
            last_name = EXCLUDED.last_name, emails = EXCLUDED.emails,
            email_keys = EXCLUDED.email_keys, company_id = EXCLUDED.company_id,
            lifecycle_stage = EXCLUDED.lifecycle_stage, tags = EXCLUDED.tags, known = true,
            deleted = false
        """,
        (
            tenant_id,
            contact_id,
            contact.first_name,
            contact.last_name,
            emails,
            [e.lower() for e in emails],
            canonical_uuid(contact.company_id) if contact.company_id else None,
            contacts_pb2.LifecycleStage.Name(contact.lifecycle_stage)
            .removeprefix("LIFECYCLE_STAGE_")
            .lower()
            if contact.lifecycle_stage
            else "",
            list(contact.tags),
        ),
    )


async def _tombstone(conn: db.Conn, table: str, tenant_id: str, record_id: str) -> None:
    """Mark a deleted record, forgetting what it held; the row stays so late links fail."""
    assert table in ("contact_summaries", "company_summaries")
    wipe = (
        "first_name = '', last_name = '', emails = '{}', email_keys = '{}', company_id = NULL,"
        " lifecycle_stage = '', tags = '{}'"
        if table == "contact_summaries"
        else "name = ''"
    )
    await conn.execute(
        f"INSERT INTO {table} (tenant_id, id, deleted) VALUES (%s, %s, true)"
        f" ON CONFLICT (tenant_id, id) DO UPDATE SET {wipe}, known = false, deleted = true",
        (tenant_id, record_id),
    )


async def _unlink_leads(conn: db.Conn, ident: Identity, contact_id: str, now: datetime) -> None:
    rows = await db.fetch_all(
        conn,
        "UPDATE leads SET contact_id = NULL, version = version + 1, etag = new_etag(),"
        " update_time = %s WHERE tenant_id = %s AND contact_id = %s RETURNING id",
        (now, ident.tenant_id, contact_id),
    )
    ids = [str(r["id"]) for r in rows]
    await leads.rescore(conn, ident.tenant_id, ids, now, "contact")
    for lead_id in ids:
        lead = await leads.select(conn, ident.tenant_id, lead_id)
        message = events_pb2.LeadUpdated(
            metadata=metadata(ident, now),
            lead=mapping.lead_to_proto(lead),
            changed_fields=["contact_id"],
        )
        await event(conn, ident.tenant_id, lead.meta, message)


async def _contact_event(conn: db.Conn, event_: Event, now: datetime) -> None:
    tenant_id = event_.tenant_id
    contact_id = canonical_uuid(event_.subject)
    if contact_id is None or not await projections.advance(conn, "contact", event_):
        return
    # Leads matched by the old addresses and by the new ones alike have a new score.
    before = await leads.leads_of_contact(conn, tenant_id, contact_id)
    if event_.type.endswith(".deleted.v1"):
        await _tombstone(conn, "contact_summaries", tenant_id, contact_id)
        ident = Identity(tenant_id, ACTOR, frozenset())
        await _unlink_leads(conn, ident, contact_id, now)
        await deals.unlink(conn, ident, "contact_id", contact_id, now)
    else:
        kind = (
            contact_events.ContactCreated
            if event_.type.endswith(".created.v1")
            else contact_events.ContactUpdated
        )
        await _upsert_contact(conn, tenant_id, contact_id, _message(event_.data, kind).contact)
    after = await leads.leads_of_contact(conn, tenant_id, contact_id)
    await leads.rescore(conn, tenant_id, sorted(set(before) | set(after)), now, "contact")


async def _company_event(conn: db.Conn, event_: Event, now: datetime) -> None:
    tenant_id = event_.tenant_id
    company_id = canonical_uuid(event_.subject)
    if company_id is None or not await projections.advance(conn, "company", event_):
        return
    if event_.type.endswith(".deleted.v1"):
        await _tombstone(conn, "company_summaries", tenant_id, company_id)
        ident = Identity(tenant_id, ACTOR, frozenset())
        await deals.unlink(conn, ident, "company_id", company_id, now)
        return
    kind = (
        contact_events.CompanyCreated
        if event_.type.endswith(".created.v1")
        else contact_events.CompanyUpdated
    )
    company = _message(event_.data, kind).company
    await conn.execute(
        "INSERT INTO company_summaries (tenant_id, id, name, known) VALUES (%s, %s, %s, true)"
        " ON CONFLICT (tenant_id, id) DO UPDATE SET name = EXCLUDED.name, known = true,"
        " deleted = false",
        (tenant_id, company_id, company.name),
    )


def contacts_handler(clock: Clock) -> Handler:
    async def handle(event_: Event, conn: db.Conn) -> None:
        now = clock()
        if event_.type.startswith(_CONTACT):
            await _contact_event(conn, event_, now)
        elif event_.type.startswith(_COMPANY):
            await _company_event(conn, event_, now)
        await engage(conn, event_, now)

    return handle
