"""Activities and tasks on leads and deals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crmkit import db
from crmkit.context import Identity
from crmkit.errors import Invalid, NotFound, check_etag
from crmkit.ids import known_id, new_id
from trellis_sales import domain
from trellis_sales.domain import Activity, ActivityFields, ActivityKind
from trellis_sales.store import meta

_FIELDS = "kind, subject, body, lead_id, deal_id, due_time, done, owner_id, done_time"
_COLUMNS = f"id, {_FIELDS}, version, etag, create_time, update_time"


@dataclass(frozen=True)
class ActivityFilter:
    lead_id: str = ""
    deal_id: str = ""
    owner_id: str = ""
    kind: ActivityKind | None = None
    done: bool | None = None


def _activity(row: dict[str, Any]) -> Activity:
    fields = ActivityFields(
        kind=ActivityKind(row["kind"]),
        subject=row["subject"],
        body=row["body"],
        lead_id=str(row["lead_id"] or ""),
        deal_id=str(row["deal_id"] or ""),
        due_time=row["due_time"],
        done=row["done"],
        owner_id=row["owner_id"],
    )
    return Activity(meta(row), fields, done_time=row["done_time"])


def _params(f: ActivityFields, done_time: datetime | None) -> tuple[Any, ...]:
    assert f.kind is not None  # normalize_activity refuses a missing kind
    return (
        f.kind.value,
        f.subject,
        f.body,
        f.lead_id or None,
        f.deal_id or None,
        f.due_time,
        f.done,
        f.owner_id,
        done_time,
    )


async def _parent_exists(conn: db.Conn, tenant_id: str, f: ActivityFields) -> None:
    table, ref, path = (
        ("leads", f.lead_id, "activity.lead_id")
        if f.lead_id
        else ("deals", f.deal_id, "activity.deal_id")
    )
    found = await db.fetch_one(
        conn,
        f"SELECT 1 AS found FROM {table} WHERE tenant_id = %s AND id = %s FOR KEY SHARE",
        (tenant_id, ref),
    )
    if found is None:
        raise Invalid([(path, f"no such {table[:-1]}")])


async def _select(conn: db.Conn, tenant_id: str, activity_id: str, lock: str = "") -> Activity:
    row = await db.fetch_one(
        conn,
        f"SELECT {_COLUMNS} FROM activities WHERE tenant_id = %s AND id = %s {lock}",
        (tenant_id, activity_id),
    )
    if row is None:
        raise NotFound("activity", activity_id)
    return _activity(row)


async def create(pool: db.Pool, ident: Identity, fields: ActivityFields, now: datetime) -> Activity:
    domain.check_parent(fields)
    tenant_id = ident.tenant_id
    async with db.tenant_tx(pool, tenant_id) as conn:
        await _parent_exists(conn, tenant_id, fields)
        row = await db.fetch_one(
            conn,
            f"INSERT INTO activities (tenant_id, id, {_FIELDS}, create_time, update_time)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (tenant_id, new_id(), *_params(fields, now if fields.done else None), now, now),
        )
        assert row is not None
        return _activity(row)


async def get(pool: db.Pool, tenant_id: str, activity_id: str) -> Activity:
    known = known_id("activity", activity_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await _select(conn, tenant_id, known)


async def update(
    pool: db.Pool,
    ident: Identity,
    activity_id: str,
    draft: ActivityFields,
    paths: Sequence[str],
    etag: str,
    now: datetime,
) -> Activity:
    tenant_id = ident.tenant_id
    known = known_id("activity", activity_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select(conn, tenant_id, known, "FOR UPDATE")
        check_etag("activity", current.meta.etag, etag)
        fields = domain.merge(current.fields, draft, paths)
        domain.check_parent(fields)
        changed = domain.changed_fields(current.fields, fields)
        if not changed:
            return current
        if {"lead_id", "deal_id"} & set(changed):
            await _parent_exists(conn, tenant_id, fields)
        done_time = current.done_time if fields.done else None
        if fields.done and not current.fields.done:
            done_time = now
        row = await db.fetch_one(
            conn,
            f"UPDATE activities SET ({_FIELDS}, version, etag, update_time) ="
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, version + 1, new_etag(), %s)"
            f" WHERE tenant_id = %s AND id = %s RETURNING {_COLUMNS}",
            (*_params(fields, done_time), now, tenant_id, known),
        )
        assert row is not None
        return _activity(row)


async def delete(pool: db.Pool, ident: Identity, activity_id: str, etag: str) -> None:
    tenant_id = ident.tenant_id
    known = known_id("activity", activity_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select(conn, tenant_id, known, "FOR UPDATE")
        check_etag("activity", current.meta.etag, etag)
        await conn.execute(
            "DELETE FROM activities WHERE tenant_id = %s AND id = %s", (tenant_id, known)
        )


async def list_page(
    pool: db.Pool, tenant_id: str, filters: ActivityFilter, after: str | None, limit: int
) -> list[Activity]:
    where = ["tenant_id = %(tenant_id)s"]
    params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit}
    if after is not None:
        where.append("id < %(after)s")
        params["after"] = after
    for name in ("lead_id", "deal_id", "owner_id"):
        value = getattr(filters, name)
        if value:
            where.append(f"{name} = %({name})s")
            params[name] = value
    if filters.kind is not None:
        where.append("kind = %(kind)s")
        params["kind"] = filters.kind.value
    if filters.done is not None:
        where.append("done = %(done)s")
        params["done"] = filters.done
    query = (
        f"SELECT {_COLUMNS} FROM activities WHERE {' AND '.join(where)}"
        " ORDER BY id DESC LIMIT %(limit)s"
    )
    async with db.tenant_tx(pool, tenant_id) as conn:
        return [_activity(r) for r in await db.fetch_all(conn, query, params)]
