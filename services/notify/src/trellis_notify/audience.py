"""Who may be written to: the projection of contacts and their consents, kept from contacts'
events, and the suppression list.

The projection follows each record's version (crmkit.projections.advance), so redelivered or
reordered events leave it as contacts left the record. A send is allowed when the address is
not suppressed for its purpose (or for every purpose) and the contact has not withdrawn consent
for it; marketing needs consent granted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crmkit import db, projections
from crmkit.consumer import Event, Handler
from crmkit.errors import NotFound

CONTACTS = "crm.events.*.contacts.contact.>"
CONSENTS = "crm.events.*.contacts.consent.>"
MARKETING = "marketing_email"
TRANSACTIONAL = "transactional_email"
_CONTACT_PROJECTION = "notify-contacts"
_CONSENT_PROJECTION = "notify-consents"


def email_key(address: str) -> str:
    return address.strip().lower()


@dataclass(frozen=True)
class Recipient:
    contact_id: str
    email: str
    first_name: str
    last_name: str
    owner_id: str

    def variables(self) -> dict[str, Any]:
        return {
            "id": self.contact_id,
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "owner_id": self.owner_id,
        }


def recipient_from_event(event: Event) -> Recipient:
    """The contact a contact event carries, read as the projection keeps it."""
    contact = event.data.get("contact") or {}
    emails = contact.get("emails") or []
    return Recipient(
        event.subject,
        str(emails[0]) if emails else "",
        str(contact.get("first_name", "")),
        str(contact.get("last_name", "")),
        str(contact.get("owner_id", "")),
    )


async def _contact_changed(conn: db.Conn, event: Event) -> None:
    if not await projections.advance(conn, _CONTACT_PROJECTION, event):
        return
    if event.type.endswith(".deleted.v1"):
        await conn.execute(
            "DELETE FROM contacts WHERE tenant_id = %s AND id = %s",
            (event.tenant_id, event.subject),
        )
        await conn.execute(
            "DELETE FROM consents WHERE tenant_id = %s AND contact_id = %s",
            (event.tenant_id, event.subject),
        )
        return
    found = recipient_from_event(event)
    await conn.execute(
        "INSERT INTO contacts (tenant_id, id, email, first_name, last_name, owner_id)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, id) DO UPDATE"
        " SET email = EXCLUDED.email, first_name = EXCLUDED.first_name,"
        " last_name = EXCLUDED.last_name, owner_id = EXCLUDED.owner_id",
        (
            event.tenant_id,
            found.contact_id,
            found.email,
            found.first_name,
            found.last_name,
            found.owner_id,
        ),
    )


async def _consent_changed(conn: db.Conn, event: Event) -> None:
    if not await projections.advance(conn, _CONSENT_PROJECTION, event):
        return
    consent = event.data.get("consent") or {}
    status = "granted" if consent.get("status") == "CONSENT_STATUS_GRANTED" else "withdrawn"
    await conn.execute(
        "INSERT INTO consents (tenant_id, id, contact_id, purpose, status)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant_id, id) DO UPDATE"
        " SET status = EXCLUDED.status",
        (event.tenant_id, event.subject, consent["contact_id"], consent["purpose"], status),
    )


def projection_handler() -> Handler:
    async def handle(event: Event, conn: db.Conn) -> None:
        if ".contacts.consent." in event.nats_subject:
            await _consent_changed(conn, event)
        else:
            await _contact_changed(conn, event)

    return handle


async def recipient(conn: db.Conn, tenant_id: str, contact_id: str) -> Recipient:
    cur = await conn.execute(
        "SELECT id, email, first_name, last_name, owner_id FROM contacts"
        " WHERE tenant_id = %s AND id = %s",
        (tenant_id, contact_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("contact", contact_id)
    return Recipient(
        str(row["id"]), row["email"], row["first_name"], row["last_name"], row["owner_id"]
    )


async def refusal(
    conn: db.Conn, tenant_id: str, email: str, contact_id: str | None, purpose: str
) -> str | None:
    """Why `email` may not get a mail of `purpose`, or None when it may."""
    if not email:
        return "no email address"
    cur = await conn.execute(
        "SELECT reason FROM suppressions WHERE tenant_id = %s AND email_key = %s"
        " AND purpose IN ('', %s) LIMIT 1",
        (tenant_id, email_key(email), purpose),
    )
    row = await cur.fetchone()
    if row is not None:
        return f"suppressed ({row['reason']})"
    consent = None
    if contact_id:
        cur = await conn.execute(
            "SELECT status FROM consents WHERE tenant_id = %s AND contact_id = %s AND purpose = %s",
            (tenant_id, contact_id, purpose),
        )
        found = await cur.fetchone()
        consent = found["status"] if found else None
    if consent == "withdrawn":
        return f"consent to {purpose} withdrawn"
    if purpose == MARKETING and consent != "granted":
        return f"no consent to {purpose}"
    return None


async def suppress(
    conn: db.Conn, tenant_id: str, email: str, purpose: str, reason: str, detail: str
) -> bool:
    """Add an address to the suppression list; False when it was there already."""
    cur = await conn.execute(
        "INSERT INTO suppressions (tenant_id, email_key, purpose, reason, detail)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (tenant_id, email_key(email), purpose, reason, detail),
    )
    return cur.rowcount == 1


@dataclass(frozen=True)
class Suppression:
    email: str
    purpose: str
    reason: str
    detail: str
    create_time: datetime


def _suppression(row: dict[str, Any]) -> Suppression:
    return Suppression(
        row["email_key"], row["purpose"], row["reason"], row["detail"], row["create_time"]
    )


_SUPPRESSION_COLUMNS = "email_key, purpose, reason, detail, create_time"


async def add_suppression(
    pool: db.Pool, tenant_id: str, email: str, purpose: str, detail: str
) -> Suppression:
    """Suppress by hand; an address already suppressed for that purpose stays as it was."""
    async with db.tenant_tx(pool, tenant_id) as conn:
        await suppress(conn, tenant_id, email, purpose, "manual", detail)
        cur = await conn.execute(
            f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions"
            " WHERE tenant_id = %s AND email_key = %s AND purpose = %s",
            (tenant_id, email_key(email), purpose),
        )
        row = await cur.fetchone()
    assert row is not None
    return _suppression(row)


async def remove_suppression(pool: db.Pool, tenant_id: str, email: str, purpose: str) -> None:
    async with db.tenant_tx(pool, tenant_id) as conn:
        cur = await conn.execute(
            "DELETE FROM suppressions WHERE tenant_id = %s AND email_key = %s AND purpose = %s",
            (tenant_id, email_key(email), purpose),
        )
    if cur.rowcount == 0:
        raise NotFound("suppression", email)


async def list_suppressions(
    pool: db.Pool, tenant_id: str, after: tuple[str, str] | None, limit: int
) -> list[Suppression]:
    where = "tenant_id = %(tenant_id)s"
    if after is not None:
        where += " AND (email_key, purpose) > (%(email)s, %(purpose)s)"
    async with db.tenant_tx(pool, tenant_id) as conn:
        cur = await conn.execute(
            f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions WHERE {where}"
            " ORDER BY email_key, purpose LIMIT %(limit)s",
            {
                "tenant_id": tenant_id,
                "email": after[0] if after else "",
                "purpose": after[1] if after else "",
                "limit": limit,
            },
        )
        return [_suppression(r) for r in await cur.fetchall()]
