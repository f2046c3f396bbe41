"""A migrated gateway database per test, on the session's PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from crmkit import db
from trellis_devstack import testing
from trellis_devstack.infra import Postgres
from trellis_gateway.app import DEFINITION

from .support import FakeContacts, GatewayDb, Harness, ManualClock, harness


@pytest.fixture
async def gateway_db(postgres: Postgres) -> AsyncIterator[GatewayDb]:
    name = f"gw_{uuid.uuid4().hex[:12]}"
    app_url = await testing.migrated_database(postgres, DEFINITION, name)
    yield GatewayDb(name, app_url, postgres.url(name))
    postgres.drop_database(name)


@pytest.fixture
async def pool(gateway_db: GatewayDb) -> AsyncIterator[db.Pool]:
    p = await db.open_pool(gateway_db.app_url, name=gateway_db.name, min_size=1, max_size=4)
    yield p
    await p.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def contacts(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeContacts]:
    backend = FakeContacts()
    await backend.start()
    # How the gateway learns its backends (the chart and devstack set one per edge).
    monkeypatch.setenv("GATEWAY_CONTACTS_ADDR", backend.address)
    yield backend
    await backend.stop()


@pytest.fixture
async def gw(
    pool: db.Pool, gateway_db: GatewayDb, clock: ManualClock, contacts: FakeContacts
) -> AsyncIterator[Harness]:
    h = harness(pool, gateway_db.app_url, clock)
    yield h
    await h.close()
