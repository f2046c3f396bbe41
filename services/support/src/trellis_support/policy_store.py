"""SQL of the SLA policies, and the JSON form of a policy's parts (also the copy a ticket keeps
of the policy it matched)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from psycopg.types.json import Jsonb

from crmkit import db, updates
from crmkit.errors import NotFound, check_etag
from crmkit.ids import new_id
from trellis_support.business_hours import BusinessCalendar, Window
from trellis_support.domain import Channel, Priority
from trellis_support.policies import Conditions, PolicyFields, SlaPolicy
from trellis_support.rows import known_id
from trellis_support.sla import AppliedPolicy, Target

_COLUMNS = (
    "id, name, position, conditions, targets, warning_percent, business_hours,"
    " version, etag, create_time, update_time"
)

# --- JSON -------------------------------------------------------------------------------------


def calendar_json(calendar: BusinessCalendar) -> dict[str, Any]:
    return {
        "time_zone": calendar.time_zone,
        "windows": [[w.weekday, w.start, w.end] for w in calendar.windows],
        "days_off": sorted(d.isoformat() for d in calendar.days_off),
        "holiday_country": calendar.holiday_country,
        "holiday_subdivision": calendar.holiday_subdivision,
    }


def calendar_from_json(data: dict[str, Any]) -> BusinessCalendar:
    return BusinessCalendar(
        time_zone=data["time_zone"],
        windows=tuple(Window(*w) for w in data["windows"]),
        days_off=frozenset(date.fromisoformat(d) for d in data["days_off"]),
        holiday_country=data["holiday_country"],
        holiday_subdivision=data["holiday_subdivision"],
    )


def _targets_json(targets: Mapping[Target, int]) -> dict[str, int]:
    return {t.value: s for t, s in targets.items()}


def _targets_from_json(data: dict[str, int]) -> dict[Target, int]:
    return {Target(t): s for t, s in data.items()}


def applied_json(policy: AppliedPolicy) -> dict[str, Any]:
    return {
        "id": policy.policy_id,
        "name": policy.name,
        "targets": _targets_json(policy.targets),
        "warning_percent": policy.warning_percent,
        "calendar": calendar_json(policy.calendar),
    }


def applied_from_json(data: dict[str, Any]) -> AppliedPolicy:
    return AppliedPolicy(
        policy_id=data["id"],
        name=data["name"],
        targets=_targets_from_json(data["targets"]),
        warning_percent=data["warning_percent"],
        calendar=calendar_from_json(data["calendar"]),
    )


def _conditions_json(c: Conditions) -> dict[str, list[str]]:
    return {
        "priorities": [p.value for p in c.priorities],
        "channels": [ch.value for ch in c.channels],
        "tags": list(c.tags),
        "company_ids": list(c.company_ids),
    }


def _policy(row: dict[str, Any]) -> SlaPolicy:
    cond = row["conditions"]
    hours = row["business_hours"]
    return SlaPolicy(
        id=str(row["id"]),
        fields=PolicyFields(
            name=row["name"],
            position=row["position"],
            conditions=Conditions(
                priorities=tuple(Priority(p) for p in cond.get("priorities", [])),
                channels=tuple(Channel(c) for c in cond.get("channels", [])),
                tags=tuple(cond.get("tags", [])),
                company_ids=tuple(cond.get("company_ids", [])),
            ),
            targets=_targets_from_json(row["targets"]),
            warning_percent=row["warning_percent"],
            business_hours=calendar_from_json(hours) if hours is not None else None,
        ),
        version=row["version"],
        etag=row["etag"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def _params(f: PolicyFields) -> dict[str, Any]:
    return {
        "name": f.name,
        "position": f.position,
        "conditions": Jsonb(_conditions_json(f.conditions)),
        "targets": Jsonb(_targets_json(f.targets)),
        "warning_percent": f.warning_percent,
        "business_hours": (
            Jsonb(calendar_json(f.business_hours)) if f.business_hours is not None else None
        ),
    }


# --- use cases --------------------------------------------------------------------------------


async def in_matching_order(conn: db.Conn, tenant_id: str) -> list[SlaPolicy]:
    rows = await db.fetch_all(
        conn,
        f"SELECT {_COLUMNS} FROM sla_policies WHERE tenant_id = %s ORDER BY position, id",
        (tenant_id,),
    )
    return [_policy(r) for r in rows]


async def create(pool: db.Pool, tenant_id: str, fields: PolicyFields, now: datetime) -> SlaPolicy:
    async with db.tenant_tx(pool, tenant_id) as conn:
        row = await db.fetch_one(
            conn,
            f"""
            INSERT INTO sla_policies (tenant_id, id, name, position, conditions, targets,
                                      warning_percent, business_hours, create_time, update_time)
            VALUES (%(tenant_id)s, %(id)s, %(name)s, %(position)s, %(conditions)s, %(targets)s,
                    %(warning_percent)s, %(business_hours)s, %(now)s, %(now)s)
            RETURNING {_COLUMNS}
            """,
            {"tenant_id": tenant_id, "id": new_id(), "now": now, **_params(fields)},
        )
    assert row is not None
    return _policy(row)


async def _select(conn: db.Conn, tenant_id: str, policy_id: str, lock: str = "") -> SlaPolicy:
    row = await db.fetch_one(
        conn,
        f"SELECT {_COLUMNS} FROM sla_policies WHERE tenant_id = %s AND id = %s {lock}",
        (tenant_id, policy_id),
    )
    if row is None:
        raise NotFound("sla policy", policy_id)
    return _policy(row)


async def get(pool: db.Pool, tenant_id: str, policy_id: str) -> SlaPolicy:
    known = known_id("sla policy", policy_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await _select(conn, tenant_id, known)


async def update(
    pool: db.Pool,
    tenant_id: str,
    policy_id: str,
    draft: PolicyFields,
    paths: Sequence[str],
    etag: str,
    now: datetime,
) -> SlaPolicy:
    known = known_id("sla policy", policy_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select(conn, tenant_id, known, "FOR NO KEY UPDATE")
        check_etag("sla policy", current.etag, etag)
        merged = updates.merge(current.fields, draft, paths)
        if not updates.changed_fields(current.fields, merged):
            return current
        row = await db.fetch_one(
            conn,
            f"""
            UPDATE sla_policies SET name = %(name)s, position = %(position)s,
                conditions = %(conditions)s, targets = %(targets)s,
                warning_percent = %(warning_percent)s, business_hours = %(business_hours)s,
                version = version + 1, etag = new_etag(), update_time = %(now)s
            WHERE tenant_id = %(tenant_id)s AND id = %(id)s
            RETURNING {_COLUMNS}
            """,
            {"tenant_id": tenant_id, "id": known, "now": now, **_params(merged)},
        )
    assert row is not None
    return _policy(row)


async def delete(pool: db.Pool, tenant_id: str, policy_id: str, etag: str) -> None:
    known = known_id("sla policy", policy_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select(conn, tenant_id, known, "FOR UPDATE")
        check_etag("sla policy", current.etag, etag)
        await conn.execute(
            "DELETE FROM sla_policies WHERE tenant_id = %s AND id = %s", (tenant_id, known)
        )


async def page(
    pool: db.Pool, tenant_id: str, after: tuple[int, str] | None, limit: int
) -> list[SlaPolicy]:
    where = "tenant_id = %(tenant_id)s"
    params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit}
    if after is not None:
        where += " AND (position, id) > (%(position)s, %(id)s)"
        params |= {"position": after[0], "id": after[1]}
    async with db.tenant_tx(pool, tenant_id) as conn:
        rows = await db.fetch_all(
            conn,
            f"SELECT {_COLUMNS} FROM sla_policies WHERE {where}"
            " ORDER BY position, id LIMIT %(limit)s",
            params,
        )
    return [_policy(r) for r in rows]
