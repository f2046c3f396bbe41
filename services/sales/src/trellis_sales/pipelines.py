"""Pipelines and their stages, and the default pipeline every tenant gets on first use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import psycopg

from crmkit import db
from crmkit.context import Identity
from crmkit.errors import Duplicate, FailedPrecondition, Invalid, NotFound, check_etag
from crmkit.ids import known_id, new_id
from trellis_sales import domain
from trellis_sales.domain import Pipeline, PipelineFields, Stage, StageKind
from trellis_sales.store import meta

_COLUMNS = "id, name, is_default, version, etag, create_time, update_time"


async def ensure_tenant(conn: db.Conn, tenant_id: str, now: datetime) -> None:
    """On a tenant's first use, its default pipeline. Concurrent first uses wait on the
    sales_tenants key for the first one's commit, and only the one that inserted creates it."""
    row = await db.fetch_one(
        conn,
        "INSERT INTO sales_tenants (tenant_id) VALUES (%s) ON CONFLICT DO NOTHING"
        " RETURNING tenant_id",
        (tenant_id,),
    )
    if row is None:
        return
    stages = tuple(Stage("", name, p, kind) for name, p, kind in domain.DEFAULT_STAGES)
    fields = PipelineFields(domain.DEFAULT_PIPELINE_NAME, stages, is_default=True)
    await _insert(conn, tenant_id, fields, now)


async def _insert(conn: db.Conn, tenant_id: str, fields: PipelineFields, now: datetime) -> Pipeline:
    pipeline_id = new_id()
    row = await db.fetch_one(
        conn,
        f"""
        INSERT INTO pipelines (tenant_id, id, name, is_default, create_time, update_time)
        VALUES (%s, %s, %s, %s, %s, %s)
        ON CONFLICT DO NOTHING
        RETURNING {_COLUMNS}
        """,
        (tenant_id, pipeline_id, fields.name, fields.is_default, now, now),
    )
    if row is None:
        raise Duplicate(f"a pipeline named {fields.name!r} already exists", "pipeline.name")
    stages = await _write_stages(conn, tenant_id, pipeline_id, fields.stages)
    return Pipeline(meta(row), replace(fields, stages=stages))


async def _write_stages(
    conn: db.Conn, tenant_id: str, pipeline_id: str, stages: Sequence[Stage]
) -> tuple[Stage, ...]:
    written = tuple(replace(s, id=s.id or new_id()) for s in stages)
    async with conn.cursor() as cur:
        await cur.executemany(
            """
            INSERT INTO stages (tenant_id, id, pipeline_id, position, name, probability, kind)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (tenant_id, id) DO UPDATE SET position = EXCLUDED.position,
                name = EXCLUDED.name, probability = EXCLUDED.probability, kind = EXCLUDED.kind
            """,
            [
                (tenant_id, s.id, pipeline_id, i, s.name, s.probability, s.kind.value)
                for i, s in enumerate(written)
            ],
        )
    return written


async def stages_of(conn: db.Conn, tenant_id: str, pipeline_id: str) -> tuple[Stage, ...]:
    rows = await db.fetch_all(
        conn,
        "SELECT id, name, probability, kind FROM stages"
        " WHERE tenant_id = %s AND pipeline_id = %s ORDER BY position",
        (tenant_id, pipeline_id),
    )
    return tuple(
        Stage(str(r["id"]), r["name"], r["probability"], StageKind(r["kind"])) for r in rows
    )


async def _pipeline(conn: db.Conn, tenant_id: str, row: dict[str, Any]) -> Pipeline:
    stages = await stages_of(conn, tenant_id, str(row["id"]))
    return Pipeline(meta(row), PipelineFields(row["name"], stages, row["is_default"]))


async def select(conn: db.Conn, tenant_id: str, pipeline_id: str, lock: str = "") -> Pipeline:
    row = await db.fetch_one(
        conn,
        f"SELECT {_COLUMNS} FROM pipelines WHERE tenant_id = %s AND id = %s {lock}",
        (tenant_id, pipeline_id),
    )
    if row is None:
        raise NotFound("pipeline", pipeline_id)
    return await _pipeline(conn, tenant_id, row)


async def default_id(conn: db.Conn, tenant_id: str) -> str:
    row = await db.fetch_one(
        conn, "SELECT id FROM pipelines WHERE tenant_id = %s AND is_default", (tenant_id,)
    )
    assert row is not None  # ensure_tenant made one, and the default cannot be deleted
    return str(row["id"])


async def _clear_default(conn: db.Conn, tenant_id: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE pipelines SET is_default = false, version = version + 1, etag = new_etag(),"
        " update_time = %s WHERE tenant_id = %s AND is_default",
        (now, tenant_id),
    )


async def create(pool: db.Pool, ident: Identity, draft: PipelineFields, now: datetime) -> Pipeline:
    if any(s.id for s in draft.stages):
        raise Invalid([("pipeline.stages", "the stages of a new pipeline have no ids yet")])
    tenant_id = ident.tenant_id
    async with db.tenant_tx(pool, tenant_id) as conn:
        await ensure_tenant(conn, tenant_id, now)
        if draft.is_default:
            await _clear_default(conn, tenant_id, now)
        return await _insert(conn, tenant_id, draft, now)


async def get(pool: db.Pool, tenant_id: str, pipeline_id: str) -> Pipeline:
    known = known_id("pipeline", pipeline_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await select(conn, tenant_id, known)


async def _stages_in_use(conn: db.Conn, tenant_id: str, stage_ids: Sequence[str]) -> set[str]:
    rows = await db.fetch_all(
        conn,
        "SELECT DISTINCT stage_id FROM deals WHERE tenant_id = %s AND stage_id = ANY(%s::uuid[])",
        (tenant_id, list(stage_ids)),
    )
    return {str(r["stage_id"]) for r in rows}


async def update(
    pool: db.Pool,
    ident: Identity,
    pipeline_id: str,
    draft: PipelineFields,
    paths: Sequence[str],
    etag: str,
    now: datetime,
) -> Pipeline:
    """Rename, make default, or replace the stages: stages sent with their ids are kept (and
    may be renamed or moved); a stage that holds deals cannot be removed or change kind."""
    tenant_id = ident.tenant_id
    known = known_id("pipeline", pipeline_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await select(conn, tenant_id, known, "FOR UPDATE")
        check_etag("pipeline", current.meta.etag, etag)
        merged = domain.merge(current.fields, draft, paths)
        if current.fields.is_default and not merged.is_default:
            raise Invalid([("pipeline.is_default", "make another pipeline the default instead")])
        if domain.changed_fields(current.fields, merged) == []:
            return current
        if "stages" in paths:
            await _check_stage_changes(conn, tenant_id, current.fields.stages, merged.stages)
        if merged.is_default and not current.fields.is_default:
            await _clear_default(conn, tenant_id, now)
        try:
            async with conn.transaction():  # a savepoint: a taken name must not abort the call
                row = await db.fetch_one(
                    conn,
                    f"""
                    UPDATE pipelines SET name = %s, is_default = %s, version = version + 1,
                        etag = new_etag(), update_time = %s
                    WHERE tenant_id = %s AND id = %s
                    RETURNING {_COLUMNS}
                    """,
                    (merged.name, merged.is_default, now, tenant_id, known),
                )
        except psycopg.errors.UniqueViolation:
            raise Duplicate(
                f"a pipeline named {merged.name!r} already exists", "pipeline.name"
            ) from None
        assert row is not None
        stages = current.fields.stages
        if "stages" in paths:
            kept = {s.id for s in merged.stages if s.id}
            removed = [s.id for s in stages if s.id not in kept]
            await conn.execute(
                "DELETE FROM stages WHERE tenant_id = %s AND id = ANY(%s::uuid[])",
                (tenant_id, removed),
            )
            stages = await _write_stages(conn, tenant_id, known, merged.stages)
        return Pipeline(meta(row), replace(merged, stages=stages))


async def _check_stage_changes(
    conn: db.Conn, tenant_id: str, old: Sequence[Stage], new: Sequence[Stage]
) -> None:
    by_id = {s.id: s for s in old}
    out = []
    for i, stage in enumerate(new):
        if stage.id and stage.id not in by_id:
            out.append((f"pipeline.stages[{i}].id", "no such stage in this pipeline"))
    if out:
        raise Invalid(out)
    kept = {s.id: s for s in new if s.id}
    touched = [s.id for s in old if s.id not in kept or kept[s.id].kind is not s.kind]
    busy = await _stages_in_use(conn, tenant_id, touched)
    if busy:
        names = ", ".join(sorted(by_id[s].name for s in busy))
        raise FailedPrecondition(
            f"stages holding deals cannot be removed or change kind ({names}); move the deals"
            " first",
            "pipeline.stages",
        )


async def delete(pool: db.Pool, ident: Identity, pipeline_id: str, etag: str) -> None:
    tenant_id = ident.tenant_id
    known = known_id("pipeline", pipeline_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await select(conn, tenant_id, known, "FOR UPDATE")
        check_etag("pipeline", current.meta.etag, etag)
        if current.fields.is_default:
            raise FailedPrecondition(
                "the default pipeline cannot be deleted; make another one the default first"
            )
        busy = await db.fetch_one(
            conn,
            "SELECT 1 AS busy FROM deals WHERE tenant_id = %s AND pipeline_id = %s LIMIT 1",
            (tenant_id, known),
        )
        if busy is not None:
            raise FailedPrecondition("the pipeline holds deals; move or delete them first")
        await conn.execute(
            "DELETE FROM pipelines WHERE tenant_id = %s AND id = %s", (tenant_id, known)
        )


async def list_page(
    pool: db.Pool, tenant_id: str, after: str | None, limit: int, now: datetime
) -> list[Pipeline]:
    async with db.tenant_tx(pool, tenant_id) as conn:
        await ensure_tenant(conn, tenant_id, now)
        rows = await db.fetch_all(
            conn,
            f"SELECT {_COLUMNS} FROM pipelines WHERE tenant_id = %s AND (%s::uuid IS NULL"
            " OR id > %s::uuid) ORDER BY id LIMIT %s",
            (tenant_id, after, after, limit),
        )
        return [await _pipeline(conn, tenant_id, r) for r in rows]
