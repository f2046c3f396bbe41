"""SQL of notify's rules, and what a rule does when an event arrives.

The rules consumer runs `fire` in its inbox transaction: an event redelivered finds its inbox
row and does nothing again. Each email a rule queues also carries the origin key
"rule:<rule>:<event>", so even an event that comes back after the inbox forgot it (a re-drive
weeks later) cannot mail anyone twice.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from crmkit import db, updates
from crmkit.clock import Clock
from crmkit.consumer import Event, Handler
from crmkit.errors import Invalid, NotFound, check_etag
from crmkit.ids import canonical_uuid, known_id, new_id
from trellis_notify import audience, cloudevent, mail_store, rules, store
from trellis_notify.rules import Action, Condition, Operator, Recipient, Rule, RuleFields
from trellis_notify.templates import Values
from trellis_notify.unsubscribe import Links

log = logging.getLogger(__name__)

_COLUMNS = sql.SQL(
    "id, name, event_type, conditions, action, disabled, version, etag, create_time, update_time"
)


class ContactNotYetKnownError(Exception):
    """The contact a rule writes to has not reached notify's projection yet: retry later."""


def _rule(row: dict[str, Any]) -> Rule:
    action = dict(row["action"])
    recipient = action.pop("recipient", "")
    return Rule(
        id=str(row["id"]),
        fields=RuleFields(
            name=row["name"],
            event_type=row["event_type"],
            conditions=tuple(
                Condition(c["field"], Operator(c["operator"]), tuple(c["values"]))
                for c in row["conditions"]
            ),
            action=Action(recipient=Recipient(recipient) if recipient else None, **action),
            disabled=row["disabled"],
        ),
        version=row["version"],
        etag=row["etag"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def _json(fields: RuleFields) -> tuple[Jsonb, Jsonb]:
    conditions = [
        {"field": c.field, "operator": str(c.operator), "values": list(c.values)}
        for c in fields.conditions
    ]
    action = dataclasses.asdict(fields.action)
    action["recipient"] = str(fields.action.recipient or "")
    return Jsonb(conditions), Jsonb(action)


async def _check_targets(conn: db.Conn, tenant_id: str, action: Action) -> None:
    """The template or webhook a rule names must be the tenant's."""
    kind, target = (
        ("template", action.template_id) if action.template_id else ("webhook", action.webhook_id)
    )
    table = sql.Identifier("templates" if kind == "template" else "webhooks")
    cur = await conn.execute(
        sql.SQL("SELECT 1 AS found FROM {} WHERE tenant_id = %s AND id = %s FOR KEY SHARE").format(
            table
        ),
        (tenant_id, target),
    )
    if await cur.fetchone() is None:
        raise Invalid([(f"rule.action.{kind}_id", f"no such {kind}")])


async def _select(conn: db.Conn, tenant_id: str, rule_id: str, lock: str = "") -> Rule:
    known = known_id("rule", rule_id)
    cur = await conn.execute(
        sql.SQL("SELECT {columns} FROM rules WHERE tenant_id = %s AND id = %s {lock}").format(
            columns=_COLUMNS, lock=sql.SQL(lock)
        ),
        (tenant_id, known),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("rule", rule_id)
    return _rule(row)


async def create_rule(pool: db.Pool, tenant_id: str, fields: RuleFields) -> Rule:
    async with db.tenant_tx(pool, tenant_id) as conn:
        await _check_targets(conn, tenant_id, fields.action)
        conditions, action = _json(fields)
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO rules (tenant_id, id, name, event_type, conditions, action, disabled)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {columns}"
            ).format(columns=_COLUMNS),
            (
                tenant_id,
                new_id(),
                fields.name,
                fields.event_type,
                conditions,
                action,
                fields.disabled,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return _rule(row)


async def get_rule(pool: db.Pool, tenant_id: str, rule_id: str) -> Rule:
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await _select(conn, tenant_id, rule_id)


async def list_rules(pool: db.Pool, tenant_id: str, after: str | None, limit: int) -> list[Rule]:
    query = sql.SQL(
        "SELECT {columns} FROM rules WHERE tenant_id = %(tenant_id)s {after}"
        " ORDER BY id DESC LIMIT %(limit)s"
    ).format(columns=_COLUMNS, after=sql.SQL("AND id < %(after)s" if after is not None else ""))
    async with db.tenant_tx(pool, tenant_id) as conn:
        cur = await conn.execute(query, {"tenant_id": tenant_id, "after": after, "limit": limit})
        return [_rule(r) for r in await cur.fetchall()]


async def update_rule(
    pool: db.Pool, tenant_id: str, rule_id: str, draft: RuleFields, paths: Sequence[str], etag: str
) -> Rule:
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select(conn, tenant_id, rule_id, "FOR NO KEY UPDATE")
        check_etag("rule", current.etag, etag)
        fields = updates.merge(current.fields, draft, paths)
        if fields == current.fields:
            return current
        if "action" in paths:
            await _check_targets(conn, tenant_id, fields.action)
        conditions, action = _json(fields)
        cur = await conn.execute(
            sql.SQL(
                "UPDATE rules SET name = %s, event_type = %s, conditions = %s, action = %s,"
                " disabled = %s, version = version + 1, etag = new_etag(), update_time = now()"
                " WHERE tenant_id = %s AND id = %s RETURNING {columns}"
            ).format(columns=_COLUMNS),
            (
                fields.name,
                fields.event_type,
                conditions,
                action,
                fields.disabled,
                tenant_id,
                current.id,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return _rule(row)


async def delete_rule(pool: db.Pool, tenant_id: str, rule_id: str, etag: str) -> None:
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select(conn, tenant_id, rule_id, "FOR UPDATE")
        check_etag("rule", current.etag, etag)
        await conn.execute(
            "DELETE FROM rules WHERE tenant_id = %s AND id = %s", (tenant_id, current.id)
        )


# --- firing -----------------------------------------------------------------------------------


def _entity(event_type: str) -> str:
    parts = event_type.split(".")  # crm.<domain>.<entity>.<action>.<version>
    return parts[2] if len(parts) == 5 else ""


async def _recipient(
    conn: db.Conn, event: Event, action: Action
) -> tuple[str, str | None, dict[str, Any]] | None:
    """(address, contact id, the contact's values) of a rule's email; None when there is none."""
    entity = _entity(event.type)
    if action.recipient is Recipient.ADDRESS:
        return action.address, None, {}
    if action.recipient is Recipient.OWNER:
        owner = rules.lookup(event.data, f"{entity}.owner_id")
        if isinstance(owner, str) and "@" in owner:
            return owner, None, {}
        return None
    if event.type.startswith("crm.contacts.contact.") and isinstance(
        event.data.get("contact"), dict
    ):
        # The event carries the contact itself: no need to wait for the projection.
        found = audience.recipient_from_event(event)
    else:
        contact_id = rules.lookup(event.data, action.contact_field or f"{entity}.contact_id")
        known = canonical_uuid(contact_id) if isinstance(contact_id, str) else None
        if known is None:
            return None
        try:
            found = await audience.recipient(conn, event.tenant_id, known)
        except NotFound:
            raise ContactNotYetKnownError(known) from None
    return found.email, found.contact_id, found.variables()


async def _act(conn: db.Conn, rule: Rule, event: Event, links: Links, at: datetime) -> None:
    action = rule.fields.action
    if action.webhook_id:
        cur = await conn.execute(
            "SELECT 1 AS found FROM webhooks WHERE tenant_id = %s AND id = %s AND NOT disabled",
            (event.tenant_id, action.webhook_id),
        )
        if await cur.fetchone() is not None:
            await store.enqueue_delivery(
                conn, event, action.webhook_id, cloudevent.structured(event), at
            )
        return
    try:
        template = await mail_store.select_template(conn, event.tenant_id, action.template_id)
    except NotFound:
        log.warning("a rule's template is gone", extra={"rule_id": rule.id})
        return
    found = await _recipient(conn, event, action)
    if found is None:
        log.info(
            "a rule found nobody to write to", extra={"rule_id": rule.id, "event_id": event.id}
        )
        return
    address, contact_id, contact = found
    await mail_store.enqueue(
        conn,
        event.tenant_id,
        mail_store.Send(
            template=template,
            to=address,
            contact_id=contact_id,
            locale="",
            values=Values(contact=contact, event=event.data),
            origin=f"rule:{rule.id}",
            origin_key=f"rule:{rule.id}:{event.id}",
        ),
        links,
        at,
    )


def firing(links: Links, clock: Clock) -> Handler:
    """The rules consumer's handler: every enabled rule of the tenant that the event fires."""

    async def handle(event: Event, conn: db.Conn) -> None:
        cur = await conn.execute(
            sql.SQL(
                "SELECT {columns} FROM rules WHERE tenant_id = %s AND NOT disabled ORDER BY id"
            ).format(columns=_COLUMNS),
            (event.tenant_id,),
        )
        for row in await cur.fetchall():
            rule = _rule(row)
            if rules.fires(rule.fields, event.type, event.data):
                await _act(conn, rule, event, links, clock())

    return handle
