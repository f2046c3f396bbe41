"""No event is lost: contacts written while NATS is down are all delivered, once, after it returns."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import grpc
import psycopg
from psycopg import sql

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit import auth, bus, db, migrations
from crmkit.consumer import Consumer, Event
from crmkit.context import Identity
from tests.helpers import Platform, Tenant
from trellis_devstack.infra import Nats

CONTACTS = 200


async def _consumer_pool(owner_url: str, app_url: str, empty_dir: str) -> db.Pool:
    """A partner-like consumer's own database: the chassis inbox plus a table of effects."""
    name = urlparse(owner_url).path.lstrip("/")
    async with await psycopg.AsyncConnection.connect(owner_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE seen (event_id text NOT NULL, contact_id text NOT NULL)")
    await migrations.migrate(
        owner_url, migrations.discover("outage", Path(empty_dir)), f"{name}_app"
    )
    async with await psycopg.AsyncConnection.connect(owner_url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("GRANT SELECT, INSERT ON seen TO {}").format(sql.Identifier(f"{name}_app"))
        )
    return await db.open_pool(app_url, name=name, min_size=1, max_size=4)


async def test_contacts_created_during_a_nats_outage_arrive_exactly_once(
    platform: Platform,
    tenant: Tenant,
    nats_server: Nats,
    fresh_db: tuple[str, str],
    tmp_path: Path,
) -> None:
    pool = await _consumer_pool(*fresh_db, str(tmp_path))
    token = auth.mint(
        Identity(tenant.id, "outage-test", frozenset({"contacts:write"})),
        platform.stack.internal_token_secret,
        ttl_seconds=600,
    )
    created: list[str] = []
    nats_server.stop()
    try:
        async with grpc.aio.insecure_channel(platform.stack.grpc_address("contacts")) as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            lock = asyncio.Semaphore(8)

            async def create(i: int) -> None:
                async with lock:
                    made = await stub.CreateContact(
                        contacts_pb2.CreateContactRequest(
                            contact=contacts_pb2.Contact(first_name=f"Offline {i}")
                        ),
                        metadata=(("trellis-identity", token),),
                        timeout=30,
                    )
                    created.append(made.id)

            # Writes do not need the bus: they land in the outbox with the record.
            await asyncio.gather(*(create(i) for i in range(CONTACTS)))
    finally:
        nats_server.start()
    assert len(created) == CONTACTS

    async def record(event: Event, conn: db.Conn) -> None:
        await conn.execute(
            "INSERT INTO seen (event_id, contact_id) VALUES (%s, %s)", (event.id, event.subject)
        )

    nc = await bus.connect(nats_server.url, name="outage-test")
    consumer = Consumer(
        nc.jetstream(),
        pool,
        name=f"outage-{uuid.uuid4().hex[:8]}",
        filter_subjects=[bus.event_subject(tenant.id, "contacts", "contact", "created")],
        handler=record,
    )
    running = asyncio.create_task(consumer.run())
    try:
        deadline = time.monotonic() + 90
        count = 0
        while time.monotonic() < deadline:
            async with pool.connection() as conn:
                row = await (await conn.execute("SELECT count(*) AS n FROM seen")).fetchone()
            count = row["n"] if row else 0
            if count >= CONTACTS:
                break
            await asyncio.sleep(0.25)
        assert count >= CONTACTS, f"only {count} of {CONTACTS} events arrived"
        await asyncio.sleep(1.0)  # anything duplicated would arrive now
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n, count(DISTINCT event_id) AS ids,"
                " array_agg(contact_id) AS contacts FROM seen"
            )
            row = await cur.fetchone()
        assert row is not None
        assert row["n"] == row["ids"] == CONTACTS
        assert sorted(row["contacts"]) == sorted(created)
    finally:
        await consumer.stop()
        await running
        await nc.close()
        await pool.close()
