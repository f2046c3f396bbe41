"""The real support service (and the contacts service it checks contacts with), in-process,
over real gRPC channels, PostgreSQL and NATS, on a clock the tests move.

One pair of services and databases for the whole package (starting them takes a while);
every test works in tenants of its own, which row-level security keeps apart.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from trellis_contacts.app import DEFINITION as CONTACTS
from trellis_devstack import testing
from trellis_devstack.infra import Nats, Postgres
from trellis_support.app import DEFINITION as SUPPORT

from .harness import (
    Database,
    FakeClock,
    Platform,
    Tenant,
    contacts_settings,
    start_support,
)


@pytest.fixture(scope="session")
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 7, 8, tzinfo=UTC))  # a Monday


@pytest.fixture(scope="session")
async def platform(
    postgres: Postgres, nats_server: Nats, clock: FakeClock
) -> AsyncIterator[Platform]:
    suffix = uuid.uuid4().hex[:8]
    contacts_app = await testing.migrated_database(postgres, CONTACTS, f"contacts_{suffix}")
    name = f"support_{suffix}"
    app_url = await testing.migrated_database(postgres, SUPPORT, name)
    settings = contacts_settings(contacts_app, nats_server.url)
    contacts_address = f"127.0.0.1:{settings.grpc_port}"
    async with (
        testing.served(CONTACTS, settings) as contacts,
        start_support(app_url, nats_server.url, contacts_address, clock) as support,
    ):
        yield Platform(
            support=support,
            contacts=contacts,
            db=Database(postgres.url(name)),
            clock=clock,
            app_url=app_url,
            nats_url=nats_server.url,
        )
    postgres.drop_database(name)
    postgres.drop_database(f"contacts_{suffix}")


@pytest.fixture
def tenant() -> Tenant:
    return Tenant(str(uuid.uuid4()))


@pytest.fixture
def other_tenant() -> Tenant:
    return Tenant(str(uuid.uuid4()))
