"""The real contacts service, in-process, over a real gRPC channel, on PostgreSQL and NATS.

One service and database for the whole package (starting one takes a while); every test works
in tenants of its own, which row-level security keeps apart, so tests do not see each other.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from crm.contacts.v1 import contacts_pb2_grpc
from trellis_contacts.app import DEFINITION
from trellis_devstack import testing
from trellis_devstack.infra import Nats, Postgres

from .support import Running, Tenant, settings_for


@pytest.fixture(scope="session")
async def service(postgres: Postgres, nats_server: Nats) -> AsyncIterator[Running]:
    name = f"contacts_{uuid.uuid4().hex[:8]}"
    app_url = await testing.migrated_database(postgres, DEFINITION, name)
    settings = settings_for(app_url, nats_server.url)
    try:
        async with testing.served(DEFINITION, settings) as served:
            yield Running(
                address=served.address,
                channel=served.channel,
                stub=contacts_pb2_grpc.ContactsServiceStub(served.channel),
                admin_url=postgres.url(name),
                app_url=app_url,
                app_role=f"{name}_app",
            )
    finally:
        postgres.drop_database(name)


@pytest.fixture
def tenant() -> Tenant:
    return Tenant(str(uuid.uuid4()))


@pytest.fixture
def other_tenant() -> Tenant:
    return Tenant(str(uuid.uuid4()))
