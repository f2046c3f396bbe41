"""Leads and their stored scores.

A lead's score is computed by scoring.score and stored with its factors, so lists can order
by it; it is computed again, in the transaction of the cause, whenever the lead, its contact,
the rules or its engagement events change, and by the re-scoring worker when decay is due.
Score changes are not changes of the lead: no new version, no event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from crm.sales.v1 import events_pb2
from crmkit import db
from crmkit.context import Identity
from crmkit.errors import NotFound, check_etag
from crmkit.ids import known_id, new_id
from trellis_sales import domain, mapping, metrics, scoring
from trellis_sales.domain import Lead, LeadFields, LeadStatus
from trellis_sales.scoring import Rule, RuleFields, RuleKind, Score
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
    "first_name, last_name, email, phone, company_name, company_size, title, source,"
    " contact_id, owner_id, status, tags, custom_fields"
)
_SELECT = f"""
SELECT l.id, l.first_name, l.last_name, l.email, l.phone, l.company_name, l.company_size,
       l.title, l.source, l.contact_id, l.owner_id, l.status, l.tags, l.custom_fields,
       l.score, l.score_factors, l.score_time, l.converted_deal_id, l.convert_time,
       l.version, l.etag, l.create_time, l.update_time, {SUMMARY_COLUMNS}
FROM leads l {SUMMARY_JOIN.format(t="l")}
"""
_RESCORE_BATCH = 500


@dataclass(frozen=True)
class LeadFilter:
    """ListLeads' filters, combined with AND; empty values do not filter."""

    status: LeadStatus | None = None
    owner_id: str = ""
    tag: str = ""
    contact_id: str = ""


def _fields(row: dict[str, Any]) -> LeadFields:
    return LeadFields(
        first_name=row["first_name"],
        last_name=row["last_name"],
        email=row["email"],
        phone=row["phone"],
        company_name=row["company_name"],
        company_size=row["company_size"],
        title=row["title"],
        source=row["source"],
        contact_id=str(row["contact_id"] or ""),
        owner_id=row["owner_id"],
        status=LeadStatus(row["status"]),
        tags=tuple(row["tags"]),
        custom_fields=row["custom_fields"],
    )


def _lead(row: dict[str, Any]) -> Lead:
    return Lead(
        meta=meta(row),
        fields=_fields(row),
        score=Score(row["score"], mapping.factors_from_json(row["score_factors"]), None),
        score_time=row["score_time"],
        contact=summary(row),
        converted_deal_id=str(row["converted_deal_id"] or ""),
        convert_time=row["convert_time"],
    )


def _params(f: LeadFields) -> tuple[Any, ...]:
    return (
        f.first_name,
        f.last_name,
        f.email,
        f.phone,
        f.company_name,
        f.company_size,
        f.title,
        f.source,
        f.contact_id or None,
        f.owner_id,
        (f.status or LeadStatus.NEW).value,
        list(f.tags),
        Jsonb(dict(f.custom_fields)),
    )


async def select(conn: db.Conn, tenant_id: str, lead_id: str, lock: str = "") -> Lead:
    row = await db.fetch_one(
        conn,
        f"{_SELECT} WHERE l.tenant_id = %s AND l.id = %s {lock}",
        (tenant_id, lead_id),
    )
    if row is None:
        raise NotFound("lead", lead_id)
    return _lead(row)


# --- scores -----------------------------------------------------------------------------------


async def rules(conn: db.Conn, tenant_id: str) -> list[Rule]:
    rows = await db.fetch_all(
        conn,
        "SELECT id, label, kind, points, conditions, event_type, contact_field, half_life_days,"
        " version, etag, create_time, update_time FROM scoring_rules WHERE tenant_id = %s"
        " ORDER BY id",
        (tenant_id,),
    )
    return [rule(r) for r in rows]


def rule(row: dict[str, Any]) -> Rule:
    return Rule(
        meta(row),
        RuleFields(
            label=row["label"],
            kind=RuleKind(row["kind"]),
            points=row["points"],
            conditions=mapping.conditions_from_json(row["conditions"]),
            event_type=row["event_type"],
            contact_field=row["contact_field"],
            half_life_days=row["half_life_days"],
        ),
    )


async def rescore(
    conn: db.Conn, tenant_id: str, lead_ids: Sequence[str], now: datetime, trigger: str
) -> None:
    """Compute and store the scores of these leads as of `now`."""
    if not lead_ids:
        return
    ruleset = await rules(conn, tenant_id)
    for start in range(0, len(lead_ids), _RESCORE_BATCH):
        batch = list(lead_ids[start : start + _RESCORE_BATCH])
        rows = await db.fetch_all(
            conn,
            f"{_SELECT} WHERE l.tenant_id = %s AND l.id = ANY(%s::uuid[])",
            (tenant_id, batch),
        )
        hits: dict[str, dict[str, list[datetime]]] = defaultdict(lambda: defaultdict(list))
        for h in await db.fetch_all(
            conn,
            "SELECT lead_id, rule_id, occurred_at FROM engagement_hits"
            " WHERE tenant_id = %s AND lead_id = ANY(%s::uuid[])",
            (tenant_id, batch),
        ):
            hits[str(h["lead_id"])][str(h["rule_id"])].append(h["occurred_at"])
        updates, due, steady = [], [], []
        for row in rows:
            lead = _lead(row)
            attributes = scoring.lead_attributes(lead.fields, lead.contact)
            result = scoring.score(ruleset, attributes, hits[lead.meta.id], now)
            factors = Jsonb(mapping.factors_to_json(result.factors))
            updates.append((result.points, factors, now, tenant_id, lead.meta.id))
            if result.rescore_at is None:
                steady.append(lead.meta.id)
            else:
                due.append((tenant_id, lead.meta.id, result.rescore_at))
        async with conn.cursor() as cur:
            await cur.executemany(
                "UPDATE leads SET score = %s, score_factors = %s, score_time = %s"
                " WHERE tenant_id = %s AND id = %s",
                updates,
            )
            await cur.executemany(
                "INSERT INTO rescore_due (tenant_id, lead_id, due_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (tenant_id, lead_id) DO UPDATE SET due_at = EXCLUDED.due_at",
                due,
            )
        await conn.execute(
            "DELETE FROM rescore_due WHERE tenant_id = %s AND lead_id = ANY(%s::uuid[])",
            (tenant_id, steady),
        )
        metrics.rescored(trigger, len(updates))


async def rescore_all(conn: db.Conn, tenant_id: str, now: datetime) -> None:
    """Every lead of the tenant: after its rules changed."""
    rows = await db.fetch_all(conn, "SELECT id FROM leads WHERE tenant_id = %s", (tenant_id,))
    await rescore(conn, tenant_id, [str(r["id"]) for r in rows], now, "rules")


async def rescore_due(pool: db.Pool, now: datetime, cap: int = 1000) -> int:
    """Re-score the leads whose decay is due, tenant by tenant; returns how many."""
    async with pool.connection() as conn:
        due = await db.fetch_all(
            conn, "SELECT tenant_id, lead_id FROM sales_leads_due(%s, %s)", (now, cap)
        )
    by_tenant: dict[str, list[str]] = defaultdict(list)
    for row in due:
        by_tenant[str(row["tenant_id"])].append(str(row["lead_id"]))
    for tenant_id, ids in by_tenant.items():
        async with db.tenant_tx(pool, tenant_id) as conn:
            await rescore(conn, tenant_id, ids, now, "decay")
    return len(due)


async def leads_of_contact(conn: db.Conn, tenant_id: str, contact_id: str) -> list[str]:
    """The leads linked to a contact, or carrying one of its email addresses."""
    rows = await db.fetch_all(
        conn,
        """
        SELECT id FROM leads WHERE tenant_id = %(t)s AND contact_id = %(c)s
        UNION
        SELECT l.id FROM leads l JOIN contact_summaries cs
          ON cs.tenant_id = l.tenant_id AND cs.id = %(c)s
        WHERE l.tenant_id = %(t)s AND l.email <> '' AND lower(l.email) = ANY(cs.email_keys)
        """,
        {"t": tenant_id, "c": contact_id},
    )
    return [str(r["id"]) for r in rows]


# --- use cases --------------------------------------------------------------------------------


async def create(pool: db.Pool, ident: Identity, draft: LeadFields, now: datetime) -> Lead:
    tenant_id = ident.tenant_id
    fields = domain.finish_lead(draft)
    async with db.tenant_tx(pool, tenant_id) as conn:
        if fields.contact_id:
            await link(conn, tenant_id, "contact_summaries", fields.contact_id, "lead.contact_id")
        lead_id = new_id()
        await conn.execute(
            f"INSERT INTO leads (tenant_id, id, {_FIELDS}, score_time, create_time, update_time)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (tenant_id, lead_id, *_params(fields), now, now, now),
        )
        await rescore(conn, tenant_id, [lead_id], now, "lead")
        lead = await select(conn, tenant_id, lead_id)
        message = events_pb2.LeadCreated(
            metadata=metadata(ident, now), lead=mapping.lead_to_proto(lead)
        )
        await event(conn, tenant_id, lead.meta, message)
        return lead


async def get(pool: db.Pool, tenant_id: str, lead_id: str) -> Lead:
    known = known_id("lead", lead_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await select(conn, tenant_id, known)


async def write(
    conn: db.Conn, ident: Identity, current: Lead, fields: LeadFields, now: datetime
) -> tuple[Lead, list[str]]:
    """Store a lead's new fields (a new version), re-scored; returns it and what changed."""
    tenant_id = ident.tenant_id
    changed = domain.changed_fields(current.fields, fields)
    if not changed:
        return current, []
    if "contact_id" in changed and fields.contact_id:
        await link(conn, tenant_id, "contact_summaries", fields.contact_id, "lead.contact_id")
    await conn.execute(
        f"UPDATE leads SET ({_FIELDS}, version, etag, update_time) ="
        " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, version + 1, new_etag(), %s)"
        " WHERE tenant_id = %s AND id = %s",
        (*_params(fields), now, tenant_id, current.meta.id),
    )
    await rescore(conn, tenant_id, [current.meta.id], now, "lead")
    return await select(conn, tenant_id, current.meta.id), changed


async def update(
    pool: db.Pool,
    ident: Identity,
    lead_id: str,
    draft: LeadFields,
    paths: Sequence[str],
    etag: str,
    now: datetime,
) -> Lead:
    tenant_id = ident.tenant_id
    known = known_id("lead", lead_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await select(conn, tenant_id, known, "FOR NO KEY UPDATE OF l")
        check_etag("lead", current.meta.etag, etag)
        merged = domain.merge(current.fields, draft, paths)
        domain.check_status_change(current.fields.status, merged.status)
        lead, changed = await write(conn, ident, current, domain.finish_lead(merged), now)
        if changed:
            message = events_pb2.LeadUpdated(
                metadata=metadata(ident, now),
                lead=mapping.lead_to_proto(lead),
                changed_fields=changed,
            )
            await event(conn, tenant_id, lead.meta, message)
        return lead


async def delete(pool: db.Pool, ident: Identity, lead_id: str, etag: str, now: datetime) -> None:
    tenant_id = ident.tenant_id
    known = known_id("lead", lead_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await select(conn, tenant_id, known, "FOR UPDATE OF l")
        check_etag("lead", current.meta.etag, etag)
        await conn.execute("DELETE FROM leads WHERE tenant_id = %s AND id = %s", (tenant_id, known))
        version = current.meta.version + 1
        message = events_pb2.LeadDeleted(metadata=metadata(ident, now), id=known, version=version)
        await deleted_event(conn, tenant_id, known, version, message)


async def list_page(
    pool: db.Pool,
    tenant_id: str,
    filters: LeadFilter,
    after: tuple[int, str] | None,
    limit: int,
) -> list[Lead]:
    """Up to `limit` leads, highest score first, then newest, after the key `after`."""
    where = ["l.tenant_id = %(tenant_id)s"]
    params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit}
    if after is not None:
        where.append("(l.score, l.id) < (%(score)s, %(after)s)")
        params |= {"score": after[0], "after": after[1]}
    if filters.status is not None:
        where.append("l.status = %(status)s")
        params["status"] = filters.status.value
    if filters.owner_id:
        where.append("l.owner_id = %(owner)s")
        params["owner"] = filters.owner_id
    if filters.tag:
        where.append("l.tags @> ARRAY[%(tag)s]::text[]")
        params["tag"] = filters.tag
    if filters.contact_id:
        where.append("l.contact_id = %(contact)s")
        params["contact"] = filters.contact_id
    query = (
        f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY l.score DESC, l.id DESC LIMIT %(limit)s"
    )
    async with db.tenant_tx(pool, tenant_id) as conn:
        return [_lead(r) for r in await db.fetch_all(conn, query, params)]
