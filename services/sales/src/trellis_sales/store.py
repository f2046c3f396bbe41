"""SQL shared by sales' stores: statements, events, etags, links, and the tenant's first use.

Every use case runs in one tenant transaction (crmkit.db.tenant_tx), so row-level security
scopes each statement to the caller's tenant; the explicit `tenant_id = ...` predicates are
for the planner. Times come from the service's clock, not from the database, so that what
depends on time (decay, sales cycles, history) can be tested on a fixed clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.message import Message

from crm.common.v1 import common_pb2
from crmkit import db, outbox
from crmkit.context import Identity
from crmkit.errors import Invalid
from trellis_sales.domain import ContactSummary, Meta


def meta(row: dict[str, Any]) -> Meta:
    return Meta(
        id=str(row["id"]),
        version=row["version"],
        etag=row["etag"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def metadata(ident: Identity, at: datetime) -> common_pb2.EventMetadata:
    # event_id stays empty: write_event makes the id and sends it as the CloudEvents ce-id.
    meta_ = common_pb2.EventMetadata(tenant_id=ident.tenant_id, actor=ident.principal)
    meta_.occurred_at.FromDatetime(at)
    return meta_


async def event(conn: db.Conn, tenant_id: str, record: Meta, message: Message) -> None:
    await outbox.write_event(
        conn, message, tenant_id=tenant_id, record_id=record.id, record_version=record.version
    )


async def deleted_event(
    conn: db.Conn, tenant_id: str, record_id: str, version: int, message: Message
) -> None:
    await outbox.write_event(
        conn, message, tenant_id=tenant_id, record_id=record_id, record_version=version
    )


# --- links to the contacts service's records --------------------------------------------------


async def link(conn: db.Conn, tenant_id: str, table: str, record_id: str, path: str) -> None:
    """Make a link to a contact or company safe: its projection row exists (a placeholder until
    its events arrive) and is share-locked until commit, so a concurrent deletion handled from
    its event waits for this transaction and then unlinks; a deleted one is refused."""
    assert table in ("contact_summaries", "company_summaries")
    await conn.execute(
        f"INSERT INTO {table} (tenant_id, id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (tenant_id, record_id),
    )
    row = await db.fetch_one(
        conn,
        f"SELECT deleted FROM {table} WHERE tenant_id = %s AND id = %s FOR SHARE",
        (tenant_id, record_id),
    )
    if row is None or row["deleted"]:
        raise Invalid([(path, f"no such {table.split('_')[0]}")])


SUMMARY_COLUMNS = """
    cs.id AS c_id, cs.known AS c_known, cs.first_name AS c_first_name,
    cs.last_name AS c_last_name, cs.emails AS c_emails, cs.company_id AS c_company_id,
    cs.lifecycle_stage AS c_lifecycle_stage, cs.tags AS c_tags, co.name AS c_company_name
"""
SUMMARY_JOIN = """
LEFT JOIN contact_summaries cs ON cs.tenant_id = {t}.tenant_id AND cs.id = {t}.contact_id
LEFT JOIN company_summaries co ON co.tenant_id = cs.tenant_id AND co.id = cs.company_id
"""


def summary(row: dict[str, Any]) -> ContactSummary | None:
    """The contact summary of a row selected with SUMMARY_COLUMNS; None until it is known."""
    if row.get("c_id") is None or not row["c_known"]:
        return None
    emails = tuple(row["c_emails"])
    return ContactSummary(
        id=str(row["c_id"]),
        first_name=row["c_first_name"],
        last_name=row["c_last_name"],
        email=emails[0] if emails else "",
        company_id=str(row["c_company_id"] or ""),
        company_name=row["c_company_name"] or "",
        emails=emails,
        lifecycle_stage=row["c_lifecycle_stage"],
        tags=tuple(row["c_tags"]),
    )
