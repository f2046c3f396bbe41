"""PostgreSQL: the async pool, and transactions scoped to one tenant for row-level security."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from crmkit import metrics

Conn = AsyncConnection[DictRow]
Pool = AsyncConnectionPool[Conn]

# The transaction of the call being served, when the chassis opened one around the handler
# (a call that records an idempotency key with its effect): the use case joins it.
_ambient: ContextVar[tuple[str, Conn] | None] = ContextVar("ambient_tx", default=None)


async def open_pool(url: str, *, name: str, min_size: int, max_size: int) -> Pool:
    pool: Pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max(min_size, max_size),
        name=name,
        open=False,
        kwargs={"row_factory": dict_row},
        timeout=10,
        # A connection PostgreSQL dropped (a restart, a failover) is found and replaced when
        # it is taken from the pool, instead of failing the request that took it.
        check=AsyncConnectionPool.check_connection,
    )
    await pool.open(wait=True, timeout=30)
    metrics.track_pool(name, pool)
    return pool


@asynccontextmanager
async def tenant_tx(pool: Pool, tenant_id: str) -> AsyncIterator[Conn]:
    """One transaction in which the RLS policies see only `tenant_id`'s rows.

    The setting is transaction-local (`set_config(..., true)`), so a pooled connection never
    carries one tenant's id into another's transaction. Inside a call the chassis runs in a
    transaction of its own (see `joined`), this is that transaction.
    """
    ambient = _ambient.get()
    if ambient is not None:
        if ambient[0] != tenant_id:
            raise RuntimeError("a use case switched tenants inside the call's transaction")
        yield ambient[1]
        return
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant_id,))
        yield conn


@asynccontextmanager
async def joined(pool: Pool, tenant_id: str) -> AsyncIterator[Conn]:
    """A tenant transaction that every `tenant_tx` inside this block joins.

    The chassis uses it to commit a call's idempotency record with the call's effect: one
    commit, so a crash anywhere leaves both or neither. An error inside rolls back all of it.
    """
    async with tenant_tx(pool, tenant_id) as conn:
        token = _ambient.set((tenant_id, conn))
        try:
            yield conn
        finally:
            _ambient.reset(token)
