"""SQL of notify's email: templates, and the emails queued from them (per-recipient status).

An email is rendered when it is queued (what was sent is what the log shows, even after its
template changes) and checked against the suppression list and consent then and again when
it is sent. `origin_key` makes each effect (a rule firing on an event, a campaign reaching a
contact) queue at most one email.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from crmkit import db, updates
from crmkit.errors import NotFound, check_etag
from crmkit.ids import known_id, new_id
from trellis_notify import audience, templates
from trellis_notify.templates import Content, Template, TemplateFields, Values
from trellis_notify.unsubscribe import Links

_TEMPLATE_COLUMNS = sql.SQL(
    "id, name, purpose, default_locale, contents, version, etag, create_time, update_time"
)
_EMAIL_COLUMNS = sql.SQL(
    "id, template_id, to_address, contact_id, purpose, locale, subject, status, error, attempts,"
    " origin, create_time, send_time"
)


@dataclass(frozen=True)
class Email:
    id: str
    template_id: str
    to: str
    contact_id: str
    purpose: str
    locale: str
    subject: str
    status: str
    error: str
    attempts: int
    origin: str
    create_time: datetime
    send_time: datetime | None


def _template(row: dict[str, Any]) -> Template:
    return Template(
        id=str(row["id"]),
        fields=TemplateFields(
            name=row["name"],
            purpose=row["purpose"],
            default_locale=row["default_locale"],
            contents=tuple(Content(**c) for c in row["contents"]),
        ),
        version=row["version"],
        etag=row["etag"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def _email(row: dict[str, Any]) -> Email:
    return Email(
        id=str(row["id"]),
        template_id=str(row["template_id"]),
        to=row["to_address"],
        contact_id=str(row["contact_id"] or ""),
        purpose=row["purpose"],
        locale=row["locale"],
        subject=row["subject"],
        status=row["status"],
        error=row["error"],
        attempts=row["attempts"],
        origin=row["origin"],
        create_time=row["create_time"],
        send_time=row["send_time"],
    )


def _contents(fields: TemplateFields) -> Jsonb:
    return Jsonb(
        [
            {"locale": c.locale, "subject": c.subject, "text": c.text, "html": c.html}
            for c in fields.contents
        ]
    )


# --- templates --------------------------------------------------------------------------------


async def select_template(
    conn: db.Conn, tenant_id: str, template_id: str, lock: str = ""
) -> Template:
    known = known_id("template", template_id)
    cur = await conn.execute(
        sql.SQL("SELECT {columns} FROM templates WHERE tenant_id = %s AND id = %s {lock}").format(
            columns=_TEMPLATE_COLUMNS, lock=sql.SQL(lock)
        ),
        (tenant_id, known),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("template", template_id)
    return _template(row)


async def create_template(pool: db.Pool, tenant_id: str, fields: TemplateFields) -> Template:
    async with db.tenant_tx(pool, tenant_id) as conn:
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO templates (tenant_id, id, name, purpose, default_locale, contents)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING {columns}"
            ).format(columns=_TEMPLATE_COLUMNS),
            (
                tenant_id,
                new_id(),
                fields.name,
                fields.purpose,
                fields.default_locale,
                _contents(fields),
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return _template(row)


async def get_template(pool: db.Pool, tenant_id: str, template_id: str) -> Template:
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await select_template(conn, tenant_id, template_id)


async def list_templates(
    pool: db.Pool, tenant_id: str, after: str | None, limit: int
) -> list[Template]:
    query = sql.SQL(
        "SELECT {columns} FROM templates WHERE tenant_id = %(tenant_id)s {after}"
        " ORDER BY id DESC LIMIT %(limit)s"
    ).format(
        columns=_TEMPLATE_COLUMNS,
        after=sql.SQL("AND id < %(after)s" if after is not None else ""),
    )
    async with db.tenant_tx(pool, tenant_id) as conn:
        cur = await conn.execute(query, {"tenant_id": tenant_id, "after": after, "limit": limit})
        return [_template(r) for r in await cur.fetchall()]


async def update_template(
    pool: db.Pool,
    tenant_id: str,
    template_id: str,
    draft: TemplateFields,
    paths: Sequence[str],
    etag: str,
) -> Template:
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await select_template(conn, tenant_id, template_id, "FOR NO KEY UPDATE")
        check_etag("template", current.etag, etag)
        merged = updates.merge(current.fields, draft, paths)
        fields = templates.finish(merged)
        if fields == current.fields:
            return current
        cur = await conn.execute(
            sql.SQL(
                "UPDATE templates SET name = %s, purpose = %s, default_locale = %s, contents = %s,"
                " version = version + 1, etag = new_etag(), update_time = now()"
                " WHERE tenant_id = %s AND id = %s RETURNING {columns}"
            ).format(columns=_TEMPLATE_COLUMNS),
            (
                fields.name,
                fields.purpose,
                fields.default_locale,
                _contents(fields),
                tenant_id,
                current.id,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return _template(row)


async def delete_template(pool: db.Pool, tenant_id: str, template_id: str, etag: str) -> None:
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await select_template(conn, tenant_id, template_id, "FOR UPDATE")
        check_etag("template", current.etag, etag)
        await conn.execute(
            "DELETE FROM templates WHERE tenant_id = %s AND id = %s", (tenant_id, current.id)
        )


# --- emails -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """One email to queue: a template to an address (of a contact, or not)."""

    template: Template
    to: str
    contact_id: str | None
    locale: str
    values: Values
    origin: str
    origin_key: str | None = None


async def enqueue(
    conn: db.Conn, tenant_id: str, send: Send, links: Links, at: datetime
) -> Email | None:
    """Render and queue one email in the caller's transaction; None when its origin_key
    already queued one. It is queued as suppressed (or failed) right away when the recipient
    may not get it (or the template cannot be rendered for it): the log says why."""
    email_id = new_id()
    purpose = send.template.fields.purpose
    values = Values(
        contact=send.values.contact,
        event=send.values.event,
        vars=send.values.vars,
        unsubscribe_url=links.url(tenant_id, email_id),
    )
    status, error = "queued", ""
    try:
        rendered = templates.render(send.template.fields, send.locale, values.as_dict())
    except templates.RenderError as err:
        rendered = templates.Rendered(send.locale, "", "", "")
        status, error = "failed", f"not rendered: {err}"
    if status == "queued":
        why = await audience.refusal(conn, tenant_id, send.to, send.contact_id, purpose)
        if why:
            status, error = "suppressed", why
    cur = await conn.execute(
        sql.SQL(
            "INSERT INTO emails (tenant_id, id, template_id, to_address, contact_id, purpose,"
            " locale, subject, text_body, html_body, status, error, next_attempt_at, origin,"
            " origin_key, create_time)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (tenant_id, origin_key) DO NOTHING RETURNING {columns}"
        ).format(columns=_EMAIL_COLUMNS),
        (
            tenant_id,
            email_id,
            send.template.id,
            send.to,
            send.contact_id,
            purpose,
            rendered.locale,
            rendered.subject,
            rendered.text,
            rendered.html,
            status,
            error,
            at,
            send.origin,
            send.origin_key,
            at,
        ),
    )
    row = await cur.fetchone()
    return _email(row) if row else None


async def get_email(pool: db.Pool, tenant_id: str, email_id: str) -> Email:
    known = known_id("email", email_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT {columns} FROM emails WHERE tenant_id = %s AND id = %s").format(
                columns=_EMAIL_COLUMNS
            ),
            (tenant_id, known),
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound("email", email_id)
    return _email(row)


async def list_emails(
    pool: db.Pool, tenant_id: str, origin: str, status: str | None, after: str | None, limit: int
) -> list[Email]:
    where = [sql.SQL("tenant_id = %(tenant_id)s")]
    if origin:
        where.append(sql.SQL("origin = %(origin)s"))
    if status is not None:
        where.append(sql.SQL("status = ANY(%(statuses)s)"))
    if after is not None:
        where.append(sql.SQL("id < %(after)s"))
    query = sql.SQL(
        "SELECT {columns} FROM emails WHERE {where} ORDER BY id DESC LIMIT %(limit)s"
    ).format(columns=_EMAIL_COLUMNS, where=sql.SQL(" AND ").join(where))
    params = {
        "tenant_id": tenant_id,
        "origin": origin,
        "statuses": ["queued", "sending"] if status == "queued" else [status],
        "after": after,
        "limit": limit,
    }
    async with db.tenant_tx(pool, tenant_id) as conn:
        cur = await conn.execute(query, params)
        return [_email(r) for r in await cur.fetchall()]


# --- the mailer's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    tenant_id: str
    id: str
    claim: str


@dataclass(frozen=True)
class Outgoing:
    """A held email, as the mailer sends it."""

    claim: Claim
    to: str
    contact_id: str | None
    purpose: str
    subject: str
    text: str
    html: str
    attempts: int


async def claim(pool: db.Pool, at: datetime, lease: timedelta, batch: int) -> list[Claim]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT tenant_id, id, claim FROM notify_claim_emails(%s, %s, %s)", (at, lease, batch)
        )
        rows = await cur.fetchall()
    return [Claim(str(r["tenant_id"]), str(r["id"]), str(r["claim"])) for r in rows]


async def claimed(pool: db.Pool, held: Claim) -> tuple[Outgoing, str | None] | None:
    """The held email and why it may not be sent now (None: it may); None if the claim lapsed."""
    async with db.tenant_tx(pool, held.tenant_id) as conn:
        cur = await conn.execute(
            "SELECT to_address, contact_id, purpose, subject, text_body, html_body, attempts"
            " FROM emails WHERE tenant_id = %s AND id = %s AND claim = %s AND status = 'sending'",
            (held.tenant_id, held.id, held.claim),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        contact_id = str(row["contact_id"]) if row["contact_id"] else None
        why = await audience.refusal(
            conn, held.tenant_id, row["to_address"], contact_id, row["purpose"]
        )
    outgoing = Outgoing(
        claim=held,
        to=row["to_address"],
        contact_id=contact_id,
        purpose=row["purpose"],
        subject=row["subject"],
        text=row["text_body"],
        html=row["html_body"],
        attempts=row["attempts"],
    )
    return outgoing, why


async def record(
    pool: db.Pool,
    held: Claim,
    *,
    status: str,
    error: str,
    attempts: int,
    next_attempt_at: datetime | None,
    at: datetime,
    bounce: Outgoing | None = None,
) -> bool:
    """Apply a send's outcome, if the claim still holds; a bounce suppresses the address."""
    async with db.tenant_tx(pool, held.tenant_id) as conn:
        cur = await conn.execute(
            "UPDATE emails SET status = %s, error = %s, attempts = %s,"
            " next_attempt_at = coalesce(%s, next_attempt_at), claim = NULL, lease_until = NULL,"
            " send_time = CASE WHEN %s = 'sent' THEN %s END"
            " WHERE tenant_id = %s AND id = %s AND claim = %s",
            (
                status,
                error,
                attempts,
                next_attempt_at,
                status,
                at,
                held.tenant_id,
                held.id,
                held.claim,
            ),
        )
        if cur.rowcount == 0:
            return False
        if bounce is not None:
            await audience.suppress(conn, held.tenant_id, bounce.to, "", "bounced", error)
    return True
