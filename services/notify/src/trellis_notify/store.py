"""SQL of notify's webhooks: endpoints, the per-endpoint delivery queues and the delivery log.

Every use case runs in a tenant transaction (crmkit.db.tenant_tx), so row-level security scopes
it to one tenant; the one exception is the dispatcher's claim, which spans tenants through the
SECURITY DEFINER function of the migrations and returns only keys, each then read and updated
in its tenant's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from crmkit import db, updates
from crmkit.consumer import Event
from crmkit.errors import FailedPrecondition, NotFound, check_etag
from crmkit.ids import known_id, new_id
from trellis_notify import cloudevent, domain
from trellis_notify.domain import Answer, Verdict, Webhook, WebhookFields

_WEBHOOK_COLUMNS = sql.SQL(
    "id, url, description, event_types, disabled, disabled_reason, secret, previous_secret,"
    " previous_secret_expires_at, version, etag, create_time, update_time"
)
_DELIVERY_COLUMNS = sql.SQL(
    "id, webhook_id, event_id, event_type, record_id, status, attempts, next_attempt_at,"
    " create_time, deliver_time, replay"
)
# Wakes every dispatcher (each replica LISTENs): work became due outside the queue's inserts.
_WAKE = "SELECT pg_notify('webhook_deliveries', '')"


@dataclass(frozen=True)
class Attempt:
    number: int
    time: datetime
    status_code: int
    error: str
    latency_ms: int
    response_snippet: str


@dataclass(frozen=True)
class Delivery:
    id: str
    webhook_id: str
    event_id: str
    event_type: str
    subject: str
    status: str
    attempts: int
    next_attempt_at: datetime
    create_time: datetime
    deliver_time: datetime | None
    replay: bool
    log: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """A due delivery a dispatcher now holds: its keys and the claim's own id."""

    tenant_id: str
    id: str
    webhook_id: str
    claim: str


@dataclass(frozen=True)
class Claimed:
    """A delivery a dispatcher holds, with what it needs to send it."""

    tenant_id: str
    id: str
    claim: str
    event_id: str
    body: bytes
    attempts: int
    schedule_start: int
    webhook: Webhook


def _webhook(row: dict[str, Any]) -> Webhook:
    return Webhook(
        id=str(row["id"]),
        fields=WebhookFields(
            url=row["url"],
            description=row["description"],
            event_types=tuple(row["event_types"]),
            disabled=row["disabled"],
        ),
        disabled_reason=row["disabled_reason"],
        secret=row["secret"],
        previous_secret=row["previous_secret"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
        version=row["version"],
        etag=row["etag"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def _delivery(row: dict[str, Any], log: list[Attempt] | None = None) -> Delivery:
    return Delivery(
        id=str(row["id"]),
        webhook_id=str(row["webhook_id"]),
        event_id=row["event_id"],
        event_type=row["event_type"],
        subject=row["record_id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        create_time=row["create_time"],
        deliver_time=row["deliver_time"],
        replay=row["replay"],
        log=log or [],
    )


def _attempt(row: dict[str, Any]) -> Attempt:
    return Attempt(
        number=row["number"],
        time=row["time"],
        status_code=row["status_code"],
        error=row["error"],
        latency_ms=row["latency_ms"],
        response_snippet=row["response_snippet"],
    )


# --- endpoints --------------------------------------------------------------------------------


async def _select_webhook(
    conn: db.Conn, tenant_id: str, webhook_id: str, lock: str = ""
) -> Webhook:
    row = await db.fetch_one(
        conn,
        sql.SQL("SELECT {columns} FROM webhooks WHERE tenant_id = %s AND id = %s {lock}").format(
            columns=_WEBHOOK_COLUMNS, lock=sql.SQL(lock)
        ),
        (tenant_id, webhook_id),
    )
    if row is None:
        raise NotFound("webhook", webhook_id)
    return _webhook(row)


async def create_webhook(
    pool: db.Pool, tenant_id: str, fields: WebhookFields, secret: str
) -> Webhook:
    async with db.tenant_tx(pool, tenant_id) as conn:
        row = await db.fetch_one(
            conn,
            sql.SQL(
                "INSERT INTO webhooks (tenant_id, id, url, description, event_types, disabled,"
                " secret) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {columns}"
            ).format(columns=_WEBHOOK_COLUMNS),
            (
                tenant_id,
                new_id(),
                fields.url,
                fields.description,
                list(fields.event_types),
                fields.disabled,
                secret,
            ),
        )
        assert row is not None
        return _webhook(row)


async def get_webhook(pool: db.Pool, tenant_id: str, webhook_id: str) -> Webhook:
    known = known_id("webhook", webhook_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await _select_webhook(conn, tenant_id, known)


async def list_webhooks(
    pool: db.Pool, tenant_id: str, after: str | None, limit: int
) -> list[Webhook]:
    query = sql.SQL(
        "SELECT {columns} FROM webhooks WHERE tenant_id = %(tenant_id)s {after}"
        " ORDER BY id DESC LIMIT %(limit)s"
    ).format(
        columns=_WEBHOOK_COLUMNS,
        after=sql.SQL("AND id < %(after)s" if after is not None else ""),
    )
    async with db.tenant_tx(pool, tenant_id) as conn:
        rows = await db.fetch_all(
            conn, query, {"tenant_id": tenant_id, "after": after, "limit": limit}
        )
        return [_webhook(r) for r in rows]


async def update_webhook(
    pool: db.Pool,
    tenant_id: str,
    webhook_id: str,
    draft: WebhookFields,
    paths: Sequence[str],
    etag: str,
) -> Webhook:
    """Write the masked fields; a change that changes nothing writes nothing. Enabling an
    endpoint clears why it was disabled and wakes the dispatchers for its queued deliveries."""
    known = known_id("webhook", webhook_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select_webhook(conn, tenant_id, known, "FOR NO KEY UPDATE")
        check_etag("webhook", current.etag, etag)
        fields = updates.merge(current.fields, draft, paths)
        if fields == current.fields:
            return current
        row = await db.fetch_one(
            conn,
            sql.SQL(
                "UPDATE webhooks SET url = %s, description = %s, event_types = %s, disabled = %s,"
                " disabled_reason = CASE WHEN %s THEN disabled_reason ELSE '' END,"
                " version = version + 1, etag = new_etag(), update_time = now()"
                " WHERE tenant_id = %s AND id = %s RETURNING {columns}"
            ).format(columns=_WEBHOOK_COLUMNS),
            (
                fields.url,
                fields.description,
                list(fields.event_types),
                fields.disabled,
                fields.disabled,
                tenant_id,
                known,
            ),
        )
        assert row is not None
        if current.fields.disabled and not fields.disabled:
            await conn.execute(_WAKE)
        return _webhook(row)


async def delete_webhook(pool: db.Pool, tenant_id: str, webhook_id: str, etag: str) -> None:
    known = known_id("webhook", webhook_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select_webhook(conn, tenant_id, known, "FOR UPDATE")
        check_etag("webhook", current.etag, etag)
        # Its deliveries and their attempts go with it (ON DELETE CASCADE).
        await conn.execute(
            "DELETE FROM webhooks WHERE tenant_id = %s AND id = %s", (tenant_id, known)
        )


async def rotate_secret(
    pool: db.Pool, tenant_id: str, webhook_id: str, secret: str, overlap: timedelta, at: datetime
) -> Webhook:
    known = known_id("webhook", webhook_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        await _select_webhook(conn, tenant_id, known, "FOR NO KEY UPDATE")
        row = await db.fetch_one(
            conn,
            sql.SQL(
                "UPDATE webhooks SET previous_secret = secret, previous_secret_expires_at = %s,"
                " secret = %s, version = version + 1, etag = new_etag(), update_time = now()"
                " WHERE tenant_id = %s AND id = %s RETURNING {columns}"
            ).format(columns=_WEBHOOK_COLUMNS),
            (at + overlap, secret, tenant_id, known),
        )
        assert row is not None
        return _webhook(row)


# --- the queues -------------------------------------------------------------------------------

_ENQUEUE = sql.SQL("""
INSERT INTO webhook_deliveries (tenant_id, id, webhook_id, event_id, event_type, record_id,
                                record_version, body, next_attempt_at, create_time, replay)
VALUES (%(tenant_id)s, %(id)s, %(webhook_id)s, %(event_id)s, %(event_type)s, %(record_id)s,
        %(record_version)s, %(body)s, %(at)s, %(at)s, %(replay)s)
RETURNING {columns}
""").format(columns=_DELIVERY_COLUMNS)


async def _enqueue(
    conn: db.Conn,
    tenant_id: str,
    webhook_id: str,
    event: Event,
    body: bytes,
    at: datetime,
    *,
    replay: bool = False,
) -> Delivery:
    row = await db.fetch_one(
        conn,
        _ENQUEUE,
        {
            "tenant_id": tenant_id,
            "id": new_id(),
            "webhook_id": webhook_id,
            "event_id": event.id,
            "event_type": event.type,
            "record_id": event.subject or event.id,
            "record_version": event.record_version,
            "body": body,
            "at": at,
            "replay": replay,
        },
    )
    assert row is not None
    return _delivery(row)


async def enqueue_delivery(
    conn: db.Conn, event: Event, webhook_id: str, body: bytes, at: datetime
) -> Delivery:
    """Queue one event for one endpoint in the caller's transaction (a rule's webhook call)."""
    return await _enqueue(conn, event.tenant_id, webhook_id, event, body, at)


async def enqueue_event(conn: db.Conn, event: Event, at: datetime) -> int:
    """Queue `event` for each enabled endpoint of its tenant whose event types match it (the
    consumer's handler, in its transaction); how many were queued."""
    rows = await db.fetch_all(
        conn,
        "SELECT id, event_types FROM webhooks WHERE tenant_id = %s AND NOT disabled",
        (event.tenant_id,),
    )
    targets = [str(r["id"]) for r in rows if domain.matches(r["event_types"], event.type)]
    if targets:
        body = cloudevent.structured(event)
        for webhook_id in targets:
            await _enqueue(conn, event.tenant_id, webhook_id, event, body, at)
    return len(targets)


async def enqueue_ping(pool: db.Pool, tenant_id: str, webhook_id: str, at: datetime) -> Delivery:
    known = known_id("webhook", webhook_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        await _select_webhook(conn, tenant_id, known)
        event_id, body = cloudevent.ping(tenant_id, known, at)
        event = Event(
            id=event_id,
            type=cloudevent.PING_TYPE,
            source=cloudevent.SOURCE,
            subject=event_id,  # a record of its own: a ping waits for nothing
            tenant_id=tenant_id,
            record_version=0,
            time="",
            data={},
            nats_subject="",
            headers={},
        )
        return await _enqueue(conn, tenant_id, known, event, body, at)


async def enqueue_replay(
    pool: db.Pool, tenant_id: str, webhook_id: str, events: Sequence[Event], at: datetime
) -> int:
    known = known_id("webhook", webhook_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        for event in events:
            await _enqueue(
                conn, tenant_id, known, event, cloudevent.structured(event), at, replay=True
            )
    return len(events)


async def list_deliveries(
    pool: db.Pool,
    tenant_id: str,
    webhook_id: str,
    status: str | None,
    after: str | None,
    limit: int,
) -> list[Delivery]:
    """A page of the delivery log, newest first, each with its last attempt."""
    known = known_id("webhook", webhook_id)
    where = [sql.SQL("d.tenant_id = %(tenant_id)s AND d.webhook_id = %(webhook_id)s")]
    if status is not None:
        where.append(sql.SQL("d.status = ANY(%(statuses)s)"))
    if after is not None:
        where.append(sql.SQL("d.id < %(after)s"))
    query = sql.SQL("""
        SELECT {columns}, a.number, a.time, a.status_code, a.error, a.latency_ms,
               a.response_snippet
        FROM webhook_deliveries d
        LEFT JOIN webhook_attempts a
          ON a.tenant_id = d.tenant_id AND a.delivery_id = d.id AND a.number = d.attempts
        WHERE {where} ORDER BY d.id DESC LIMIT %(limit)s
    """).format(
        columns=sql.SQL(", ").join(
            sql.SQL("d.") + sql.Identifier(c.strip())
            for c in _DELIVERY_COLUMNS.as_string().split(",")
        ),
        where=sql.SQL(" AND ").join(where),
    )
    params = {
        "tenant_id": tenant_id,
        "webhook_id": known,
        # "sending" is a pending delivery whose attempt is under way.
        "statuses": ["pending", "sending"] if status == "pending" else [status],
        "after": after,
        "limit": limit,
    }
    async with db.tenant_tx(pool, tenant_id) as conn:
        await _select_webhook(conn, tenant_id, known)
        rows = await db.fetch_all(conn, query, params)
    return [_delivery(r, [_attempt(r)] if r["number"] is not None else []) for r in rows]


async def _select_delivery(
    conn: db.Conn, tenant_id: str, webhook_id: str, delivery_id: str, lock: str = ""
) -> Delivery:
    row = await db.fetch_one(
        conn,
        sql.SQL(
            "SELECT {columns} FROM webhook_deliveries"
            " WHERE tenant_id = %s AND webhook_id = %s AND id = %s {lock}"
        ).format(columns=_DELIVERY_COLUMNS, lock=sql.SQL(lock)),
        (tenant_id, webhook_id, delivery_id),
    )
    if row is None:
        raise NotFound("delivery", delivery_id)
    attempts = await db.fetch_all(
        conn,
        "SELECT number, time, status_code, error, latency_ms, response_snippet"
        " FROM webhook_attempts WHERE tenant_id = %s AND delivery_id = %s ORDER BY number",
        (tenant_id, delivery_id),
    )
    return _delivery(row, [_attempt(a) for a in attempts])


async def get_delivery(
    pool: db.Pool, tenant_id: str, webhook_id: str, delivery_id: str
) -> Delivery:
    webhook = known_id("webhook", webhook_id)
    known = known_id("delivery", delivery_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await _select_delivery(conn, tenant_id, webhook, known)


async def retry_delivery(
    pool: db.Pool, tenant_id: str, webhook_id: str, delivery_id: str, at: datetime
) -> Delivery:
    """Queue a failed or dead-lettered delivery again, with the whole retry schedule ahead."""
    webhook = known_id("webhook", webhook_id)
    known = known_id("delivery", delivery_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select_delivery(conn, tenant_id, webhook, known, "FOR UPDATE")
        if current.status not in ("failed", "dead"):
            raise FailedPrecondition(
                f"only a failed or dead-lettered delivery can be retried; this one is "
                f"{'pending' if current.status == 'sending' else current.status}"
            )
        await conn.execute(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = %s,"
            " schedule_start = attempts, claim = NULL, lease_until = NULL"
            " WHERE tenant_id = %s AND id = %s",
            (at, tenant_id, known),
        )
        await conn.execute(_WAKE)
        return await _select_delivery(conn, tenant_id, webhook, known)


# --- the dispatcher's side --------------------------------------------------------------------


async def claim(
    pool: db.Pool,
    at: datetime,
    lease: timedelta,
    batch: int,
    per_webhook: int,
    busy: Sequence[str],
) -> list[Claim]:
    """Up to `batch` due deliveries, now held for `lease`."""
    async with pool.connection() as conn:
        rows = await db.fetch_all(
            conn,
            "SELECT tenant_id, id, webhook_id, claim"
            " FROM notify_claim_deliveries(%s, %s, %s, %s, %s::uuid[])",
            (at, lease, batch, per_webhook, list(busy)),
        )
    return [
        Claim(str(r["tenant_id"]), str(r["id"]), str(r["webhook_id"]), str(r["claim"]))
        for r in rows
    ]


async def claimed(pool: db.Pool, claim: Claim) -> Claimed | None:
    """The held delivery and its endpoint; None when the claim was lost (lease passed and
    another dispatcher took it, or the endpoint was deleted)."""
    async with db.tenant_tx(pool, claim.tenant_id) as conn:
        row = await db.fetch_one(
            conn,
            "SELECT id, webhook_id, event_id, body, attempts, schedule_start FROM webhook_deliveries"
            " WHERE tenant_id = %s AND id = %s AND claim = %s AND status = 'sending'",
            (claim.tenant_id, claim.id, claim.claim),
        )
        if row is None:
            return None
        webhook = await _select_webhook(conn, claim.tenant_id, claim.webhook_id)
    return Claimed(
        tenant_id=claim.tenant_id,
        id=claim.id,
        claim=claim.claim,
        event_id=row["event_id"],
        body=bytes(row["body"]),
        attempts=row["attempts"],
        schedule_start=row["schedule_start"],
        webhook=webhook,
    )


async def record_attempt(
    pool: db.Pool, held: Claimed, at: datetime, answer: Answer, verdict: Verdict
) -> bool:
    """Log the attempt and apply its verdict, if the claim still holds; False if it did not."""
    number = held.attempts + 1
    async with db.tenant_tx(pool, held.tenant_id) as conn:
        cur = await conn.execute(
            "UPDATE webhook_deliveries SET status = %s, attempts = %s,"
            " next_attempt_at = coalesce(%s, next_attempt_at), claim = NULL, lease_until = NULL,"
            " deliver_time = CASE WHEN %s = 'delivered' THEN %s END"
            " WHERE tenant_id = %s AND id = %s AND claim = %s",
            (
                verdict.status,
                number,
                verdict.next_attempt_at,
                verdict.status,
                at,
                held.tenant_id,
                held.id,
                held.claim,
            ),
        )
        if cur.rowcount == 0:
            return False
        await conn.execute(
            "INSERT INTO webhook_attempts (tenant_id, delivery_id, number, time, status_code,"
            " error, latency_ms, response_snippet) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                held.tenant_id,
                held.id,
                number,
                at,
                answer.status,
                answer.error,
                answer.latency_ms,
                answer.snippet,
            ),
        )
        if verdict.disable_reason:
            await conn.execute(
                "UPDATE webhooks SET disabled = true, disabled_reason = %s,"
                " version = version + 1, etag = new_etag(), update_time = now()"
                " WHERE tenant_id = %s AND id = %s AND NOT disabled",
                (verdict.disable_reason, held.tenant_id, held.webhook.id),
            )
    return True
