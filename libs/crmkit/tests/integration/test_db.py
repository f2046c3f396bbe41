"""The pool: after PostgreSQL drops every connection (a restart, a failover), no transaction
fails for it — each dead connection is found and replaced when it is handed out."""

from __future__ import annotations

from urllib.parse import urlparse

import psycopg

from crmkit import db
from crmkit.ids import new_id
from trellis_devstack.infra import Postgres


async def test_connections_dropped_by_the_server_cost_no_transaction(
    fresh_db: tuple[str, str], postgres: Postgres
) -> None:
    _, app_url = fresh_db
    pool = await db.open_pool(app_url, name="droptest", min_size=4, max_size=4)
    try:
        async with await psycopg.AsyncConnection.connect(
            postgres.superuser_url, autocommit=True
        ) as admin:
            cur = await admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                (urlparse(app_url).path.lstrip("/"),),
            )
            assert await cur.fetchone() == (4,)  # every pooled connection is dead now
        for _ in range(8):
            async with db.tenant_tx(pool, new_id()) as conn:
                await conn.execute("SELECT 1")
    finally:
        await pool.close()
