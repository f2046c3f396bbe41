"""PostgreSQL: the async pool, and transactions scoped to one tenant for row-level security."""

from __future__ import annotations

import select
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg import AsyncClientCursor, AsyncConnection, sql
from psycopg.abc import Params, QueryNoTemplate
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from crmkit import metrics
from crmkit.ids import canonical_uuid

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
        check=_check,
    )
    await pool.open(wait=True, timeout=30)
    metrics.track_pool(name, pool)
    return pool


async def _check(conn: Conn) -> None:
    """Find a connection PostgreSQL dropped (a restart, a failover) when it is taken from the
    pool, so that it is replaced instead of failing the request that took it.

    An idle connection has nothing to read; one the server ended has its goodbye (an error
    message, then end of file) waiting. Looking costs a poll of the socket, where a check
    query (psycopg_pool's check_connection) costs a round trip on every checkout; only a
    connection with something to read gets the round trip, which fails on a dead one.
    """
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)


# Tries of a transaction's first statement on connections found dead by it (see tenant_tx).
_BEGIN_ATTEMPTS = 3
# The tenant for the RLS policies, until the transaction ends; a canonical UUID goes in.
_SET_TENANT = "SELECT set_config('app.tenant_id', '{}', true)"


@asynccontextmanager
async def tenant_tx(pool: Pool, tenant_id: str) -> AsyncIterator[Conn]:
    """One transaction in which the RLS policies see only `tenant_id`'s rows.

    The setting is transaction-local (`set_config(..., true)`), so a pooled connection never
    carries one tenant's id into another's transaction. Inside a call the chassis runs in a
    transaction of its own (see `joined`), this is that transaction.

    BEGIN and the setting go to the server in one round trip, as one simple-protocol query
    (psycopg would send its own BEGIN first, a round trip of its own, on a connection not in
    autocommit); the tenant id is a UUID in canonical form, so it is a safe literal there.
    That query is also the last word on a connection the pool's check passed but the server
    was ending meanwhile: nothing has run yet when it fails, so it is run on another one.
    """
    ambient = _ambient.get()
    if ambient is not None:
        if ambient[0] != tenant_id:
            raise RuntimeError("a use case switched tenants inside the call's transaction")
        yield ambient[1]
        return
    tenant = canonical_uuid(tenant_id)
    if tenant is None:
        raise ValueError(f"not a tenant id: {tenant_id!r}")
    begin = "BEGIN; " + _SET_TENANT.format(tenant)
    for attempt in range(1, _BEGIN_ATTEMPTS + 1):
        async with pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                try:
                    await conn.execute(begin)
                except psycopg.OperationalError:
                    if conn.broken and attempt < _BEGIN_ATTEMPTS:
                        continue  # the pool replaces it
                    raise
                try:
                    yield conn
                except BaseException:
                    if not conn.broken:
                        await conn.rollback()
                    raise
                await conn.commit()
                return
            finally:
                if not conn.broken:
                    await conn.set_autocommit(False)


async def tenant_read(
    pool: Pool,
    tenant_id: str,
    query: sql.SQL | sql.Composed,
    params: Mapping[str, Any] | Sequence[Any],
) -> list[DictRow]:
    """The rows of one read-only statement, seen as `tenant_id` sees them, in one round trip.

    The tenant setting and the statement go as one simple-protocol query, which PostgreSQL
    runs as one implicit transaction: the transaction-local setting holds for the statement
    and ends with it, as in tenant_tx, without the round trips of BEGIN and COMMIT. The
    parameters are bound by psycopg on this side (a client cursor), the price of one round
    trip: the statement is planned each time. Inside a call's transaction it joins that.
    """
    ambient = _ambient.get()
    if ambient is not None:
        async with tenant_tx(pool, tenant_id) as conn:
            return await (await conn.execute(query, params)).fetchall()
    tenant = canonical_uuid(tenant_id)
    if tenant is None:
        raise ValueError(f"not a tenant id: {tenant_id!r}")
    statement = sql.Composed([sql.SQL(_SET_TENANT.format(tenant) + "; "), query])
    for attempt in range(1, _BEGIN_ATTEMPTS + 1):
        async with pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                async with AsyncClientCursor(conn, row_factory=dict_row) as cur:
                    try:
                        await cur.execute(statement, params)
                    except psycopg.OperationalError:
                        if conn.broken and attempt < _BEGIN_ATTEMPTS:
                            continue  # nothing ran: the pool replaces it
                        raise
                    cur.nextset()  # past the setting's own result
                    return await cur.fetchall()
            finally:
                if not conn.broken:
                    await conn.set_autocommit(False)
    raise AssertionError("unreachable: the last attempt returns or raises")


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


async def fetch_one(conn: Conn, query: QueryNoTemplate, params: Params) -> dict[str, Any] | None:
    cur = await conn.execute(query, params)
    return await cur.fetchone()


async def fetch_all(conn: Conn, query: QueryNoTemplate, params: Params) -> list[dict[str, Any]]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()
