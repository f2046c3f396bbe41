"""Scoring rules: each change re-scores every lead of the tenant in the same transaction, so
no lead is ever shown with points of a rule that no longer reads so."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from psycopg.types.json import Jsonb

from crmkit import db
from crmkit.context import Identity
from crmkit.errors import FailedPrecondition, NotFound, check_etag
from crmkit.ids import known_id, new_id
from trellis_sales import domain, leads, mapping, scoring
from trellis_sales.scoring import Rule, RuleFields

_COLUMNS = (
    "id, label, kind, points, conditions, event_type, contact_field, half_life_days,"
    " version, etag, create_time, update_time"
)


def _params(f: RuleFields) -> tuple[object, ...]:
    assert f.kind is not None  # checked by scoring.check_rule
    return (
        f.label,
        f.kind.value,
        f.points,
        Jsonb(mapping.conditions_to_json(f.conditions)),
        f.event_type,
        f.contact_field,
        f.half_life_days,
    )


async def _serialise(conn: db.Conn, tenant_id: str) -> None:
    """One rule change of a tenant at a time: its count and its re-scoring see all others."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('scoring_rules:' || %s))", (tenant_id,)
    )


async def _select(conn: db.Conn, tenant_id: str, rule_id: str, lock: str = "") -> Rule:
    row = await db.fetch_one(
        conn,
        f"SELECT {_COLUMNS} FROM scoring_rules WHERE tenant_id = %s AND id = %s {lock}",
        (tenant_id, rule_id),
    )
    if row is None:
        raise NotFound("scoring rule", rule_id)
    return leads.rule(row)


async def create(pool: db.Pool, ident: Identity, draft: RuleFields, now: datetime) -> Rule:
    tenant_id = ident.tenant_id
    fields = scoring.check_rule(draft)
    async with db.tenant_tx(pool, tenant_id) as conn:
        await _serialise(conn, tenant_id)
        count = await db.fetch_one(
            conn, "SELECT count(*) AS n FROM scoring_rules WHERE tenant_id = %s", (tenant_id,)
        )
        if count is not None and count["n"] >= scoring.MAX_RULES:
            raise FailedPrecondition(f"a tenant has at most {scoring.MAX_RULES} scoring rules")
        row = await db.fetch_one(
            conn,
            "INSERT INTO scoring_rules (tenant_id, id, label, kind, points, conditions,"
            " event_type, contact_field, half_life_days, create_time, update_time)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (tenant_id, new_id(), *_params(fields), now, now),
        )
        assert row is not None
        await leads.rescore_all(conn, tenant_id, now)
        return leads.rule(row)


async def get(pool: db.Pool, tenant_id: str, rule_id: str) -> Rule:
    known = known_id("scoring rule", rule_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await _select(conn, tenant_id, known)


async def update(
    pool: db.Pool,
    ident: Identity,
    rule_id: str,
    draft: RuleFields,
    paths: Sequence[str],
    etag: str,
    now: datetime,
) -> Rule:
    tenant_id = ident.tenant_id
    known = known_id("scoring rule", rule_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        await _serialise(conn, tenant_id)
        current = await _select(conn, tenant_id, known, "FOR UPDATE")
        check_etag("scoring rule", current.meta.etag, etag)
        fields = scoring.check_rule(domain.merge(current.fields, draft, paths))
        if not domain.changed_fields(current.fields, fields):
            return current
        row = await db.fetch_one(
            conn,
            "UPDATE scoring_rules SET (label, kind, points, conditions, event_type, contact_field,"
            " half_life_days, version, etag, update_time) ="
            " (%s, %s, %s, %s, %s, %s, %s, version + 1, new_etag(), %s)"
            f" WHERE tenant_id = %s AND id = %s RETURNING {_COLUMNS}",
            (*_params(fields), now, tenant_id, known),
        )
        assert row is not None
        if fields.kind is not current.fields.kind or fields.event_type != current.fields.event_type:
            # The events counted were of another kind: they say nothing about the new rule.
            await conn.execute(
                "DELETE FROM engagement_hits WHERE tenant_id = %s AND rule_id = %s",
                (tenant_id, known),
            )
        await leads.rescore_all(conn, tenant_id, now)
        return leads.rule(row)


async def delete(pool: db.Pool, ident: Identity, rule_id: str, etag: str, now: datetime) -> None:
    tenant_id = ident.tenant_id
    known = known_id("scoring rule", rule_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        await _serialise(conn, tenant_id)
        current = await _select(conn, tenant_id, known, "FOR UPDATE")
        check_etag("scoring rule", current.meta.etag, etag)
        # Its engagement hits go with it (ON DELETE CASCADE).
        await conn.execute(
            "DELETE FROM scoring_rules WHERE tenant_id = %s AND id = %s", (tenant_id, known)
        )
        await leads.rescore_all(conn, tenant_id, now)


async def list_page(pool: db.Pool, tenant_id: str, after: str | None, limit: int) -> list[Rule]:
    async with db.tenant_tx(pool, tenant_id) as conn:
        rows = await db.fetch_all(
            conn,
            f"SELECT {_COLUMNS} FROM scoring_rules WHERE tenant_id = %s"
            " AND (%s::uuid IS NULL OR id > %s::uuid) ORDER BY id LIMIT %s",
            (tenant_id, after, after, limit),
        )
        return [leads.rule(r) for r in rows]
