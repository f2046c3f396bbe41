"""Support's copy of the contact facts it shows on tickets, kept from the contacts service's
events (and from the contact a new ticket was checked against)."""

from __future__ import annotations

from dataclasses import replace

from google.protobuf import json_format
from nats.js import JetStreamContext

from crm.contacts.v1 import contacts_pb2
from crm.contacts.v1 import events_pb2 as contact_events
from crmkit import contract, db, projections
from crmkit.consumer import Consumer, Event
from trellis_support.domain import ContactFacts
from trellis_support.mapping import contact_facts

PROJECTION = "support-contacts"
SUBJECTS = ["crm.events.*.contacts.contact.>"]
_DELETED = contract.event_type(contact_events.ContactDeleted.DESCRIPTOR).ce_type

# The contact's own version orders the facts too, so a fact learnt from a GetContact answer
# and one from an event cannot overwrite a newer one whichever arrives last.
_UPSERT = """
INSERT INTO contact_facts (tenant_id, contact_id, name, email, company_id, deleted, version)
VALUES (%(tenant_id)s, %(contact_id)s, %(name)s, %(email)s, %(company_id)s, %(deleted)s,
        %(version)s)
ON CONFLICT (tenant_id, contact_id) DO UPDATE SET
    name = EXCLUDED.name, email = EXCLUDED.email, company_id = EXCLUDED.company_id,
    deleted = EXCLUDED.deleted, version = EXCLUDED.version
WHERE contact_facts.version < EXCLUDED.version
"""


async def upsert_contact_facts(conn: db.Conn, tenant_id: str, facts: ContactFacts) -> None:
    await conn.execute(
        _UPSERT,
        {
            "tenant_id": tenant_id,
            "contact_id": facts.contact_id,
            "name": facts.name,
            "email": facts.email,
            "company_id": facts.company_id or None,
            "deleted": facts.deleted,
            "version": facts.version,
        },
    )


def facts_of(event: Event) -> ContactFacts:
    """The facts an event tells (its data is the contact's proto3 JSON)."""
    if event.type == _DELETED:
        return ContactFacts(event.subject, "", "", "", event.record_version, deleted=True)
    # Unknown fields are what a newer contacts service adds: ignored, as proto3 JSON allows.
    contact = json_format.ParseDict(
        event.data.get("contact", {}), contacts_pb2.Contact(), ignore_unknown_fields=True
    )
    return replace(contact_facts(contact), contact_id=event.subject, version=event.record_version)


async def apply_contact_event(event: Event, conn: db.Conn) -> None:
    if await projections.advance(conn, PROJECTION, event):
        await upsert_contact_facts(conn, event.tenant_id, facts_of(event))


def contacts_consumer(js: JetStreamContext, pool: db.Pool) -> Consumer:
    return Consumer(
        js, pool, name=PROJECTION, filter_subjects=SUBJECTS, handler=apply_contact_event
    )
