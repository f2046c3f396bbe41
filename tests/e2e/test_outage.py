"""No event is lost: contacts written while NATS is down are all delivered, once, after it returns."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from urllib.parse import urlparse

import grpc
import psycopg
from psycopg import sql

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit import bus, db, migrations
from crmkit.consumer import Consumer, Event
from crmkit.context import Identity
from tests.helpers import Platform, Tenant
from trellis_devstack.infra import Nats
from trellis_devstack.testing import eventually

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
    token = platform.stack.mint(Identity(tenant.id, "outage-test", frozenset({"contacts:write"})))
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

        async def arrived(contact_id: str | None = None) -> int:
            """Events recorded: all of them, or one contact's."""
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT count(*) AS n FROM seen"
                    " WHERE %(id)s::text IS NULL OR contact_id = %(id)s",
                    {"id": contact_id},
                )
                row = await cur.fetchone()
            return row["n"] if row else 0

        async def all_arrived() -> bool:
            return await arrived() >= CONTACTS

        await eventually(all_arrived, f"{CONTACTS} events", within=90)
        # A contact created now is published after every earlier one: once its event is in,
        # any duplicate of an earlier event would have arrived before it.
        async with grpc.aio.insecure_channel(platform.stack.grpc_address("contacts")) as channel:
            marker = await contacts_pb2_grpc.ContactsServiceStub(channel).CreateContact(
                contacts_pb2.CreateContactRequest(
                    contact=contacts_pb2.Contact(first_name="Marker")
                ),
                metadata=(("trellis-identity", token),),
                timeout=30,
            )

        await eventually(lambda: arrived(marker.id), "the marker's event", within=90)
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n, count(DISTINCT event_id) AS ids,"
                " array_agg(contact_id) AS contacts FROM seen WHERE contact_id <> %s",
                (marker.id,),
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
