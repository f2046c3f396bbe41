"""Wake a worker on PostgreSQL NOTIFY: the outbox relay, and any queue a service keeps in its
database (notify's webhook deliveries), so work starts at the writer's commit instead of at
the next poll. Polling stays the fallback: a notification can be missed while reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import Any

import psycopg

from crmkit import bus, db

log = logging.getLogger(__name__)


async def _connect(pool: db.Pool, application_name: str) -> psycopg.AsyncConnection[Any]:
    # Its own connection, not a pooled one: LISTEN state must not leak to other users,
    # and it must not hold a pool slot forever.
    conninfo: Any = pool.conninfo
    if callable(conninfo):
        conninfo = conninfo()
    if inspect.isawaitable(conninfo):
        conninfo = await conninfo
    kwargs: Any = pool.kwargs
    if callable(kwargs):
        kwargs = kwargs()
    if inspect.isawaitable(kwargs):
        kwargs = await kwargs
    params = {k: v for k, v in dict(kwargs or {}).items() if k not in {"autocommit", "row_factory"}}
    params.setdefault("application_name", application_name)
    return await psycopg.AsyncConnection.connect(str(conninfo), autocommit=True, **params)


async def wake_on_notify(
    pool: db.Pool, channel: str, wake: asyncio.Event, stopping: asyncio.Event
) -> None:
    """Set `wake` on every NOTIFY on `channel` until `stopping` is set; reconnect when the
    connection dies. Also sets it on (re)connecting: rows may have been committed while nobody
    was listening."""
    failures = 0
    while not stopping.is_set():
        try:
            async with await _connect(pool, f"trellis-{channel}-listener") as conn:
                await conn.execute(f'LISTEN "{channel}"')
                failures = 0
                wake.set()
                while True:
                    async for _ in conn.notifies(timeout=30.0):
                        wake.set()
                    # A silently dead socket would just never notify: probe it.
                    await conn.execute("SELECT 1")
        except Exception as err:
            failures += 1
            delay = bus.retry_delay(failures)
            log.warning(
                "listener connection lost; polling until it is back",
                extra={"channel": channel, "error": repr(err), "retry_in_seconds": round(delay, 2)},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
