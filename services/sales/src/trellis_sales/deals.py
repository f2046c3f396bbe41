"""Deals, their stage history and their events.

A stage move is an update that also records a stage change (who, when, from, to) keyed by the
version it gave the deal, and emits deal.stage_changed, plus deal.won or deal.lost when the
deal enters a closed-won or closed-lost stage from one that was not: re-sending the same stage
changes nothing and emits nothing, so a retried move never wins a deal twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from psycopg import sql
from psycopg.types.json import Jsonb

from crm.sales.v1 import events_pb2, sales_pb2
from crmkit import db
from crmkit.context import Identity
from crmkit.errors import Invalid, NotFound, check_etag
from crmkit.ids import known_id, new_id
from trellis_sales import domain, mapping, pipelines
from trellis_sales.domain import Deal, DealFields, ForecastCategory, Stage, StageKind
from trellis_sales.store import (
    SUMMARY_COLUMNS,
    SUMMARY_JOIN,
    deleted_event,
    event,
    link,
    meta,
    metadata,
    summary,
)

_FIELDS = (
    "name, amount, currency, pipeline_id, stage_id, close_date, owner_id, contact_id,"
    " company_id, forecast_category, custom_fields, close_time"
)
_SELECT = f"""
SELECT d.id, d.name, d.amount, d.currency, d.pipeline_id, d.stage_id, d.close_date, d.owner_id,
       d.contact_id, d.company_id, d.forecast_category, d.custom_fields, d.lead_id,
       d.close_time, d.version, d.etag, d.create_time, d.update_time, {SUMMARY_COLUMNS}
FROM deals d {SUMMARY_JOIN.format(t="d")}
"""


@dataclass(frozen=True)
class DealFilter:
    """ListDeals' filters, combined with AND; empty values do not filter."""

    pipeline_id: str = ""
    stage_id: str = ""
    owner_id: str = ""
    contact_id: str = ""


def _deal(row: dict[str, Any]) -> Deal:
    fields = DealFields(
        name=row["name"],
        amount=row["amount"],
        currency=row["currency"],
        pipeline_id=str(row["pipeline_id"]),
        stage_id=str(row["stage_id"]),
        close_date=row["close_date"],
        owner_id=row["owner_id"],
        contact_id=str(row["contact_id"] or ""),
        company_id=str(row["company_id"] or ""),
        forecast_category=ForecastCategory(row["forecast_category"]),
        custom_fields=row["custom_fields"],
    )
    return Deal(
        meta(row),
        fields,
        lead_id=str(row["lead_id"] or ""),
        close_time=row["close_time"],
        contact=summary(row),
    )


def _params(f: DealFields, close_time: datetime | None) -> tuple[Any, ...]:
    return (
        f.name,
        f.amount,
        f.currency,
        f.pipeline_id,
        f.stage_id,
        f.close_date,
        f.owner_id,
        f.contact_id or None,
        f.company_id or None,
        (f.forecast_category or ForecastCategory.PIPELINE).value,
        Jsonb(dict(f.custom_fields)),
        close_time,
    )


async def select(conn: db.Conn, tenant_id: str, deal_id: str, lock: str = "") -> Deal:
    row = await db.fetch_one(
        conn, f"{_SELECT} WHERE d.tenant_id = %s AND d.id = %s {lock}", (tenant_id, deal_id)
    )
    if row is None:
        raise NotFound("deal", deal_id)
    return _deal(row)


async def _place(
    conn: db.Conn, tenant_id: str, fields: DealFields, now: datetime
) -> tuple[DealFields, Stage]:
    """The deal in its pipeline (the default when none) and stage (the first open one when
    none), checked to exist and to belong together."""
    if not fields.pipeline_id:
        await pipelines.ensure_tenant(conn, tenant_id, now)
        fields = replace(fields, pipeline_id=await pipelines.default_id(conn, tenant_id))
    stages = await pipelines.stages_of(conn, tenant_id, fields.pipeline_id)
    if not stages:  # every pipeline has stages: none means no such pipeline
        raise Invalid([("deal.pipeline_id", "no such pipeline")])
    if not fields.stage_id:
        first = next(s for s in stages if s.kind is StageKind.OPEN)
        return replace(fields, stage_id=first.id), first
    for stage in stages:
        if stage.id == fields.stage_id:
            return fields, stage
    raise Invalid([("deal.stage_id", "no such stage in the deal's pipeline")])


async def _links(conn: db.Conn, tenant_id: str, fields: DealFields, old: DealFields | None) -> None:
    if fields.contact_id and (old is None or old.contact_id != fields.contact_id):
        await link(conn, tenant_id, "contact_summaries", fields.contact_id, "deal.contact_id")
    if fields.company_id and (old is None or old.company_id != fields.company_id):
        await link(conn, tenant_id, "company_summaries", fields.company_id, "deal.company_id")


def _closing(
    fields: DealFields, stage: Stage, was: Stage | None, close_time: datetime | None, now: datetime
) -> tuple[DealFields, datetime | None]:
    """The deal as its (new) stage makes it, and its close time."""
    fields = domain.settle_deal(fields, stage.kind, was.kind if was else None)
    if stage.kind is StageKind.OPEN:
        return fields, None
    if was is not None and was.kind is stage.kind:
        return fields, close_time
    return replace(fields, close_date=fields.close_date or now.date()), now


async def _stage_events(
    conn: db.Conn,
    ident: Identity,
    deal: Deal,
    stage: Stage,
    was: tuple[Stage, str] | None,
    now: datetime,
) -> None:
    """A stage change's history row and events; `was` is the stage left and its pipeline
    (None at creation, which counts as entering the first stage)."""
    change = sales_pb2.StageChange(
        deal_version=deal.meta.version,
        from_stage_id=was[0].id if was else "",
        to_stage_id=stage.id,
        from_pipeline_id=was[1] if was else "",
        to_pipeline_id=deal.fields.pipeline_id,
        actor=ident.principal,
    )
    change.change_time.FromDatetime(now)
    await conn.execute(
        "INSERT INTO stage_changes (tenant_id, deal_id, deal_version, from_stage_id,"
        " to_stage_id, from_pipeline_id, to_pipeline_id, actor, change_time)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            ident.tenant_id,
            deal.meta.id,
            deal.meta.version,
            change.from_stage_id or None,
            stage.id,
            change.from_pipeline_id or None,
            change.to_pipeline_id,
            ident.principal,
            now,
        ),
    )
    proto = mapping.deal_to_proto(deal)
    events: list[Message] = []
    if was is not None:
        events.append(
            events_pb2.DealStageChanged(metadata=metadata(ident, now), deal=proto, change=change)
        )
    if was is None or was[0].kind is not stage.kind:
        if stage.kind is StageKind.CLOSED_WON:
            events.append(events_pb2.DealWon(metadata=metadata(ident, now), deal=proto))
        elif stage.kind is StageKind.CLOSED_LOST:
            events.append(events_pb2.DealLost(metadata=metadata(ident, now), deal=proto))
    for message in events:
        await event(conn, ident.tenant_id, deal.meta, message)


async def insert(
    conn: db.Conn, ident: Identity, draft: DealFields, now: datetime, lead_id: str = ""
) -> Deal:
    """A new deal in the caller's transaction (CreateDeal, and a lead's conversion)."""
    tenant_id = ident.tenant_id
    draft, stage = await _place(conn, tenant_id, draft, now)
    fields, close_time = _closing(draft, stage, None, None, now)
    await _links(conn, tenant_id, fields, None)
    deal_id = new_id()
    await conn.execute(
        f"INSERT INTO deals (tenant_id, id, {_FIELDS}, lead_id, create_time, update_time)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (tenant_id, deal_id, *_params(fields, close_time), lead_id or None, now, now),
    )
    deal = await select(conn, tenant_id, deal_id)
    created = events_pb2.DealCreated(
        metadata=metadata(ident, now), deal=mapping.deal_to_proto(deal)
    )
    await event(conn, tenant_id, deal.meta, created)
    await _stage_events(conn, ident, deal, stage, None, now)
    return deal


async def create(pool: db.Pool, ident: Identity, draft: DealFields, now: datetime) -> Deal:
    async with db.tenant_tx(pool, ident.tenant_id) as conn:
        return await insert(conn, ident, draft, now)


_GET = sql.SQL(f"{_SELECT} WHERE d.tenant_id = %s AND d.id = %s")


async def get(pool: db.Pool, tenant_id: str, deal_id: str) -> Deal:
    known = known_id("deal", deal_id)
    rows = await db.tenant_read(pool, tenant_id, _GET, (tenant_id, known))
    if not rows:
        raise NotFound("deal", deal_id)
    return _deal(rows[0])


async def update(
    pool: db.Pool,
    ident: Identity,
    deal_id: str,
    draft: DealFields,
    paths: Sequence[str],
    etag: str,
    now: datetime,
) -> Deal:
    tenant_id = ident.tenant_id
    known = known_id("deal", deal_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await select(conn, tenant_id, known, "FOR NO KEY UPDATE OF d")
        check_etag("deal", current.meta.etag, etag)
        merged = domain.merge(current.fields, draft, paths)
        if merged.pipeline_id != current.fields.pipeline_id and "stage_id" not in paths:
            merged = replace(merged, stage_id="")  # a new pipeline starts at its first stage
        was_stage = await _stage(conn, tenant_id, current.fields)
        merged, stage = await _place(conn, tenant_id, merged, now)
        fields, close_time = _closing(merged, stage, was_stage, current.close_time, now)
        changed = domain.changed_fields(current.fields, fields)
        if not changed:
            return current
        await _links(conn, tenant_id, fields, current.fields)
        await conn.execute(
            f"UPDATE deals SET ({_FIELDS}, version, etag, update_time) ="
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, version + 1, new_etag(), %s)"
            " WHERE tenant_id = %s AND id = %s",
            (*_params(fields, close_time), now, tenant_id, known),
        )
        deal = await select(conn, tenant_id, known)
        updated = events_pb2.DealUpdated(
            metadata=metadata(ident, now),
            deal=mapping.deal_to_proto(deal),
            changed_fields=changed,
        )
        await event(conn, tenant_id, deal.meta, updated)
        if stage.id != was_stage.id:
            was = (was_stage, current.fields.pipeline_id)
            await _stage_events(conn, ident, deal, stage, was, now)
        return deal


async def _stage(conn: db.Conn, tenant_id: str, fields: DealFields) -> Stage:
    stages = await pipelines.stages_of(conn, tenant_id, fields.pipeline_id)
    return next(s for s in stages if s.id == fields.stage_id)


async def delete(pool: db.Pool, ident: Identity, deal_id: str, etag: str, now: datetime) -> None:
    tenant_id = ident.tenant_id
    known = known_id("deal", deal_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await select(conn, tenant_id, known, "FOR UPDATE OF d")
        check_etag("deal", current.meta.etag, etag)
        await conn.execute("DELETE FROM deals WHERE tenant_id = %s AND id = %s", (tenant_id, known))
        version = current.meta.version + 1
        message = events_pb2.DealDeleted(metadata=metadata(ident, now), id=known, version=version)
        await deleted_event(conn, tenant_id, known, version, message)


async def list_page(
    pool: db.Pool, tenant_id: str, filters: DealFilter, after: str | None, limit: int
) -> list[Deal]:
    """Up to `limit` deals, newest first, after the id `after` (keyset paging)."""
    where = ["d.tenant_id = %(tenant_id)s"]
    params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit}
    if after is not None:
        where.append("d.id < %(after)s")
        params["after"] = after
    for name in ("pipeline_id", "stage_id", "owner_id", "contact_id"):
        value = getattr(filters, name)
        if value:
            where.append(f"d.{name} = %({name})s")
            params[name] = value
    query = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY d.id DESC LIMIT %(limit)s"
    async with db.tenant_tx(pool, tenant_id) as conn:
        return [_deal(r) for r in await db.fetch_all(conn, query, params)]


async def stage_changes(
    pool: db.Pool, tenant_id: str, deal_id: str, after: int | None, limit: int
) -> list[sales_pb2.StageChange]:
    known = known_id("deal", deal_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        await select(conn, tenant_id, known)  # NOT_FOUND rather than an empty history
        rows = await db.fetch_all(
            conn,
            "SELECT deal_version, from_stage_id, to_stage_id, from_pipeline_id, to_pipeline_id,"
            " actor, change_time FROM stage_changes WHERE tenant_id = %s AND deal_id = %s"
            " AND deal_version > %s ORDER BY deal_version LIMIT %s",
            (tenant_id, known, after or 0, limit),
        )
    changes = []
    for r in rows:
        change = sales_pb2.StageChange(
            deal_version=r["deal_version"],
            from_stage_id=str(r["from_stage_id"] or ""),
            to_stage_id=str(r["to_stage_id"]),
            from_pipeline_id=str(r["from_pipeline_id"] or ""),
            to_pipeline_id=str(r["to_pipeline_id"]),
            actor=r["actor"],
        )
        change.change_time.FromDatetime(r["change_time"])
        changes.append(change)
    return changes


async def unlink(
    conn: db.Conn, ident: Identity, column: str, record_id: str, now: datetime
) -> None:
    """Drop the links of the tenant's deals to a deleted contact or company, each an ordinary
    change (new version, deal.updated), so partners' copies follow."""
    assert column in ("contact_id", "company_id")
    rows = await db.fetch_all(
        conn,
        f"UPDATE deals SET {column} = NULL, version = version + 1, etag = new_etag(),"
        f" update_time = %s WHERE tenant_id = %s AND {column} = %s RETURNING id",
        (now, ident.tenant_id, record_id),
    )
    for row in rows:
        deal = await select(conn, ident.tenant_id, str(row["id"]))
        message = events_pb2.DealUpdated(
            metadata=metadata(ident, now),
            deal=mapping.deal_to_proto(deal),
            changed_fields=[column],
        )
        await event(conn, ident.tenant_id, deal.meta, message)


async def check(conn: db.Conn, tenant_id: str, draft: DealFields, now: datetime) -> None:
    """Everything insert() would refuse, refused now: a conversion checks its deal before it
    creates a contact in another service, which a rollback here could not undo."""
    draft, stage = await _place(conn, tenant_id, draft, now)
    domain.settle_deal(draft, stage.kind, None)
