"""PostgreSQL: the async pool, and transactions scoped to one tenant for row-level security."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from crmkit import metrics

Conn = AsyncConnection[DictRow]
Pool = AsyncConnectionPool[Conn]


async def open_pool(url: str, *, name: str, min_size: int, max_size: int) -> Pool:
    pool: Pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max(min_size, max_size),
        name=name,
        open=False,
        kwargs={"row_factory": dict_row},
        timeout=10,
    )
    await pool.open(wait=True, timeout=30)
    metrics.track_pool(name, pool)
    return pool


@asynccontextmanager
async def tenant_tx(pool: Pool, tenant_id: str) -> AsyncIterator[Conn]:
    """One transaction in which the RLS policies see only `tenant_id`'s rows.

    The setting is transaction-local (`set_config(..., true)`), so a pooled connection never
    carries one tenant's id into another's transaction.
    """
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant_id,))
        yield conn


@asynccontextmanager
async def system_tx(pool: Pool) -> AsyncIterator[Conn]:
    """A transaction outside any tenant (outbox relay, inbox): RLS tables show nothing here."""
    async with pool.connection() as conn, conn.transaction():
        yield conn
