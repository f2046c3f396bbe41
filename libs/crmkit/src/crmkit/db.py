"""PostgreSQL: the async pool, and transactions scoped to one tenant for row-level security."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from crmkit import metrics

P = ParamSpec("P")
R = TypeVar("R")

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


_DEADLOCK_ATTEMPTS = 3


def retry_deadlocks(use_case: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run a use case's transaction again when PostgreSQL rolled it back to break a deadlock.

    Lock order is kept consistent where it can be, but some writes (two records exchanging
    unique values) can still wait on each other. The victim's transaction was rolled back
    whole, so running it again is safe; after a few tries the error reaches the interceptor,
    which answers ABORTED.
    """

    @functools.wraps(use_case)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        for _ in range(_DEADLOCK_ATTEMPTS - 1):
            try:
                return await use_case(*args, **kwargs)
            except psycopg.errors.DeadlockDetected:
                continue
        return await use_case(*args, **kwargs)

    return run
