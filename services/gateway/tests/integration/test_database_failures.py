"""The gateway's own database dropping connections mid-request: a 503 with Retry-After, never
a 500, and no Idempotency-Key left stuck.

Each test makes the gateway's query wait on a lock the test holds, ends that very backend as
the superuser (what a failover or a restart does to it), then lets go.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from google.protobuf.message import Message

from crmkit import idempotency
from crmkit.errors import Unavailable

from .support import Behaviour, FakeContacts, GatewayDb, Harness, contact, fails_with

CONTACT_ID = "01900000-0000-7000-8000-0000000000d1"
Conn = psycopg.AsyncConnection[Any]


@asynccontextmanager
async def superuser(gateway_db: GatewayDb) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(gateway_db.superuser_url) as conn:
        yield conn


async def end_the_waiting_backend(gateway_db: GatewayDb) -> None:
    """Terminate the gateway's connection that waits on one of our locks, once it does."""
    deadline = time.monotonic() + 30
    async with await psycopg.AsyncConnection.connect(
        gateway_db.superuser_url, autocommit=True
    ) as conn:
        while True:
            row = await (
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND usename = %s AND wait_event_type = 'Lock'",
                    (gateway_db.name, f"{gateway_db.name}_app"),
                )
            ).fetchone()
            if row is not None:
                return
            assert time.monotonic() < deadline, "the gateway never waited on the lock"
            await asyncio.sleep(0.02)


async def test_a_dropped_connection_during_the_key_lookup_is_a_503(
    gw: Harness, gateway_db: GatewayDb
) -> None:
    _, key = await gw.tenant()
    async with superuser(gateway_db) as locker, gw.client(key) as api:
        await locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        request = asyncio.create_task(api.get("/v1/api-keys"))
        await end_the_waiting_backend(gateway_db)
        await locker.rollback()
        r = await request
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["retry-after"]) >= 1
        assert (await api.get("/v1/api-keys")).status_code == 200  # the pool recovered


async def test_a_dropped_connection_while_claiming_a_key_is_a_503_and_claims_nothing(
    gw: Harness, gateway_db: GatewayDb
) -> None:
    _, key = await gw.tenant()
    body = {"name": "k", "scopes": ["admin"]}
    headers = {"Idempotency-Key": "claim-dropped"}
    async with gw.client(key) as api:
        assert (await api.get("/v1/api-keys")).status_code == 200  # the key is verified
        async with superuser(gateway_db) as locker:
            await locker.execute("LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE")
            request = asyncio.create_task(api.post("/v1/api-keys", json=body, headers=headers))
            await end_the_waiting_backend(gateway_db)
            await locker.rollback()
        r = await request
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        retried = await api.post("/v1/api-keys", json=body, headers=headers)
        assert retried.status_code == 201, retried.text


async def _held_backend(contacts: FakeContacts, method: str, answer: Behaviour) -> asyncio.Event:
    """`method` answers with `answer` once the returned event is set."""
    go = asyncio.Event()

    async def held(request: Message, ctx: Any) -> Message:
        await go.wait()
        return await answer(request, ctx)

    contacts.answers[method] = held
    return go


async def _called(contacts: FakeContacts, times: int) -> None:
    deadline = time.monotonic() + 30
    while len(contacts.metadata) < times:
        assert time.monotonic() < deadline, "the backend was never called"
        await asyncio.sleep(0.02)


async def test_a_failed_completion_answers_the_caller_and_the_lease_frees_the_key(
    gw: Harness, gateway_db: GatewayDb, contacts: FakeContacts
) -> None:
    async def created(_: Message, __: Any) -> Message:
        return contact(CONTACT_ID)

    go = await _held_backend(contacts, "CreateContact", created)
    _, key = await gw.tenant(("contacts:write",))
    headers = {"Idempotency-Key": "complete-dropped"}
    async with gw.client(key) as api:
        request = asyncio.create_task(
            api.post("/v1/contacts", json={"first_name": "Ada"}, headers=headers)
        )
        await _called(contacts, 1)  # the key is claimed: now hold its row
        async with superuser(gateway_db) as locker:
            await locker.execute("SELECT 1 FROM idempotency_keys FOR UPDATE")
            go.set()
            await end_the_waiting_backend(gateway_db)
            await locker.rollback()
        r = await request
        assert r.status_code == 201, r.text  # the write happened: the caller hears so
        assert r.headers["location"] == f"/v1/contacts/{CONTACT_ID}"

        # The claim outlived its request, for its lease only; then a retry runs, with the
        # same key for the service, which answers it from its own record.
        assert (
            await api.post("/v1/contacts", json={"first_name": "Ada"}, headers=headers)
        ).status_code == 409
        gw.clock.advance(gw.settings.lease_seconds + 1)
        retried = await api.post("/v1/contacts", json={"first_name": "Ada"}, headers=headers)
        assert retried.status_code == 201
    assert [m[idempotency.METADATA_KEY] for m in contacts.metadata] == ["complete-dropped"] * 2


async def test_a_failed_release_keeps_the_answer_and_the_lease_frees_the_key(
    gw: Harness, gateway_db: GatewayDb, contacts: FakeContacts
) -> None:
    go = await _held_backend(contacts, "CreateContact", fails_with(Unavailable("try later")))
    _, key = await gw.tenant(("contacts:write",))
    headers = {"Idempotency-Key": "release-dropped"}
    async with gw.client(key) as api:
        request = asyncio.create_task(
            api.post("/v1/contacts", json={"first_name": "Ada"}, headers=headers)
        )
        await _called(contacts, 1)
        async with superuser(gateway_db) as locker:
            await locker.execute("SELECT 1 FROM idempotency_keys FOR UPDATE")
            go.set()
            await end_the_waiting_backend(gateway_db)
            await locker.rollback()
        r = await request
        assert r.status_code == 503
        assert r.json()["detail"] == "try later"
        assert int(r.headers["retry-after"]) >= 1

        contacts.answers["CreateContact"] = fails_with(Unavailable("still down"))
        gw.clock.advance(gw.settings.lease_seconds + 1)
        retried = await api.post("/v1/contacts", json={"first_name": "Ada"}, headers=headers)
        assert retried.json()["detail"] == "still down"  # it ran: the key was free again
