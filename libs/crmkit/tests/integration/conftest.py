"""Fixtures for the bus tests: a migrated database with a pool, a NATS connection, tracing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import psycopg
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from psycopg import sql

from crmkit import bus, db, migrations, telemetry
from crmkit.config import TracingSettings
from trellis_devstack.testing import eventually

# What handlers in these tests record, in the handler's own transaction: counting rows here
# is counting effects, so duplicates would show.
SEEN_TABLE = """
CREATE TABLE seen (
    consumer  text NOT NULL,
    event_id  text NOT NULL,
    instance  text NOT NULL DEFAULT '',
    seen_at   timestamptz NOT NULL DEFAULT clock_timestamp()
)"""


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    telemetry.setup_tracing("test", TracingSettings(), extra=SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
async def pool(fresh_db: tuple[str, str], tmp_path: Path) -> AsyncIterator[db.Pool]:
    """The app role's pool on a database with the chassis tables and `seen`."""
    owner_url, app_url = fresh_db
    name = urlparse(owner_url).path.lstrip("/")
    app_role = f"{name}_app"
    async with await psycopg.AsyncConnection.connect(owner_url, autocommit=True) as conn:
        await conn.execute(SEEN_TABLE)
    await migrations.migrate(owner_url, migrations.discover("bustest", tmp_path), app_role)
    async with await psycopg.AsyncConnection.connect(owner_url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("GRANT SELECT, INSERT ON seen TO {}").format(sql.Identifier(app_role))
        )
    p = await db.open_pool(app_url, name=name, min_size=2, max_size=12)
    yield p
    await p.close()


@pytest.fixture
async def owner(fresh_db: tuple[str, str], pool: db.Pool) -> AsyncIterator[db.Pool]:
    """A pool of the tables' owner, to inspect every tenant's chassis rows as a test must
    (the app role sees one tenant's, and the outbox only through the relay's functions)."""
    p = await db.open_pool(fresh_db[0], name=f"{pool.name}_owner", min_size=1, max_size=2)
    yield p
    await p.close()


@pytest.fixture
async def nc(nats_server: Any) -> AsyncIterator[NATS]:
    conn = await bus.connect(nats_server.url, "bus-test")
    await bus.ensure_streams(conn.jetstream(), replicas=1)
    yield conn
    await conn.close()


@pytest.fixture
def js(nc: NATS) -> JetStreamContext:
    return nc.jetstream()


class Worker(Protocol):
    async def run(self) -> None: ...
    async def stop(self) -> None: ...


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    """Run relays/consumers for the block; stop them after, and surface a crashed run()."""
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield
        for t in tasks:
            if t.done():  # run() must never return on its own
                t.result()
                raise AssertionError(f"{t} ended before stop()")
    finally:
        await asyncio.wait_for(asyncio.gather(*(w.stop() for w in workers)), 15)
        await asyncio.wait_for(asyncio.gather(*tasks), 15)


async def scalar(pool: db.Pool, query: str, *params: Any) -> Any:
    async with pool.connection() as conn, conn.transaction():
        row = await (await conn.execute(query, params)).fetchone()
        assert row is not None
        return next(iter(row.values()))


async def stream_messages(js: JetStreamContext, stream: str, subject: str) -> list[RawStreamMsg]:
    """Every message stored in `stream` under `subject` (wildcards allowed), in order."""
    found: list[RawStreamMsg] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return found
        assert msg.seq is not None
        found.append(msg)
        seq = msg.seq + 1


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Helpers:
    """The helpers above, for test modules (importlib mode cannot import a conftest)."""

    running = staticmethod(running)
    eventually = staticmethod(eventually)
    scalar = staticmethod(scalar)
    stream_messages = staticmethod(stream_messages)
    counter = staticmethod(counter)


@pytest.fixture
def h() -> type[Helpers]:
    return Helpers
