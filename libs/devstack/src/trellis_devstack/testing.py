"""What every service's integration tests share: the settings a service under test takes,
identity tokens for its callers, the error a call fails with, waiting for what happens in
the background, and looks at its database behind its back."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2

from crmkit import auth, migrations
from crmkit.config import ServiceSettings
from crmkit.context import Identity
from crmkit.service import ServiceDefinition, serve
from trellis_devstack.infra import Postgres, free_port
from trellis_devstack.probes import wait_for_health

# The gateway's rate limits far above what a fault run, a fuzzing run or a benchmark sends:
# they are not what those measure.
NO_RATE_LIMITS = {
    f"GATEWAY_RATE_LIMIT_{limit}": "1000000"
    for limit in ("KEY_PER_SECOND", "KEY_BURST", "TENANT_PER_SECOND", "TENANT_BURST")
}


def service_settings(nats_url: str, key: auth.SigningKey) -> dict[str, Any]:
    """The settings every service takes in tests, before its own: a free port, a small pool,
    a quick shutdown, and trust in tokens signed with `key`."""
    return {
        "bind_host": "127.0.0.1",
        "grpc_port": free_port(),
        "metrics_port": 0,
        "db_pool_min": 1,
        "db_pool_max": 10,
        "shutdown_grace_seconds": 2,
        # These two have platform-wide names (no service prefix).
        "NATS_URL": nats_url,
        "INTERNAL_TOKEN_PUBLIC_KEYS": auth.jwks(key.public_jwk()),
    }


async def migrated_database(postgres: Postgres, defn: ServiceDefinition, name: str) -> str:
    """A new database `name` with the service's schema; the URL its app role connects with."""
    owner_url, app_url = postgres.create_database(name)
    await migrations.migrate(owner_url, defn.migrations(), f"{name}_app")
    return app_url


@dataclass
class Served:
    """A service running in this process."""

    address: str
    channel: grpc.aio.Channel
    stop: Callable[[], Awaitable[None]]  # before the block ends, for a test that stops it


@asynccontextmanager
async def served(defn: ServiceDefinition, settings: ServiceSettings) -> AsyncIterator[Served]:
    """The service served in this process on `settings` until the block ends, from when its
    health says SERVING."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(defn, settings, stop))
    address = f"127.0.0.1:{settings.grpc_port}"
    channel = grpc.aio.insecure_channel(address)

    async def stopped() -> None:
        stop.set()
        await task

    try:
        await wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)
        yield Served(address, channel, stopped)
    finally:
        await stopped()
        await channel.close()


def mint(key: auth.SigningKey, tenant_id: str, scopes: Iterable[str], principal: str) -> str:
    """An identity token as the gateway would send it."""
    return auth.mint(Identity(tenant_id, principal, frozenset(scopes)), key, ttl_seconds=120)


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call fails with (and a test failure if it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


async def eventually(
    check: Callable[[], Awaitable[Any] | Any],
    what: str = "it",
    *,
    within: float = 60,
    interval: float = 0.05,
) -> Any:
    """Poll until `check()` (plain or async) is truthy and return that; fail naming `what`
    and the last value after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


async def count_rows(admin_url: str, table: str, tenant_id: str) -> int:
    """How many rows of `table` a tenant has, as the superuser (whom RLS does not bind) sees."""
    async with await psycopg.AsyncConnection.connect(admin_url) as conn:
        cur = await conn.execute(
            psycopg.sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
                psycopg.sql.Identifier(table)
            ),
            (tenant_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def outbox_types(admin_url: str, tenant_id: str) -> list[str]:
    """The types of a tenant's outbox events, in order."""
    async with await psycopg.AsyncConnection.connect(admin_url) as conn:
        cur = await conn.execute(
            "SELECT ce_type FROM outbox WHERE tenant_id = %s ORDER BY seq", (tenant_id,)
        )
        return [r[0] for r in await cur.fetchall()]
