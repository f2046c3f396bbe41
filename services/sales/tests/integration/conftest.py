"""The real sales service in-process on a settable clock, with the real contacts service it
calls, over real gRPC channels, on PostgreSQL and NATS.

One pair of services for the whole package (starting them takes a while); every test works in
tenants of its own, which row-level security keeps apart, so tests do not see each other.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from crm.contacts.v1 import contacts_pb2_grpc
from crm.sales.v1 import sales_pb2_grpc
from crmkit import bus
from crmkit.config import ServiceSettings
from crmkit.service import ServiceDefinition, serve
from trellis_contacts.app import DEFINITION as CONTACTS
from trellis_contacts.config import ContactsSettings
from trellis_devstack import testing
from trellis_devstack.infra import Nats, Postgres
from trellis_devstack.probes import wait_for_health
from trellis_sales.app import definition
from trellis_sales.config import SalesSettings

from .support import KEY, ManualClock, Running, Tenant


def _settings(
    cls: type[ServiceSettings], app_url: str, nats_url: str, **extra: object
) -> ServiceSettings:
    return cls.model_validate(
        {**testing.service_settings(nats_url, KEY), "database_url": app_url, **extra}
    )


class Hosted:
    """A service served in this process until stopped; it can be started again on its port."""

    def __init__(self, defn: ServiceDefinition, settings: ServiceSettings) -> None:
        self.defn, self.settings = defn, settings
        self.address = f"127.0.0.1:{settings.grpc_port}"
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(serve(self.defn, self.settings, self._stop))
        async with grpc.aio.insecure_channel(self.address) as channel:
            await wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


@pytest.fixture(scope="session")
async def contacts_service(postgres: Postgres, nats_server: Nats) -> AsyncIterator[Hosted]:
    name = f"contacts_{uuid.uuid4().hex[:8]}"
    app_url = await testing.migrated_database(postgres, CONTACTS, name)
    hosted = Hosted(CONTACTS, _settings(ContactsSettings, app_url, nats_server.url))
    await hosted.start()
    yield hosted
    await hosted.stop()
    postgres.drop_database(name)


@pytest.fixture(scope="session")
async def service(
    postgres: Postgres, nats_server: Nats, contacts_service: Hosted
) -> AsyncIterator[Running]:
    name = f"sales_{uuid.uuid4().hex[:8]}"
    clock = ManualClock()
    defn = definition(clock)
    app_url = await testing.migrated_database(postgres, defn, name)
    # The address the chart and devstack would give it (SalesSettings.callees reads the env).
    os.environ["SALES_CONTACTS_ADDR"] = contacts_service.address
    settings = _settings(SalesSettings, app_url, nats_server.url, rescore_interval_seconds=0.2)
    hosted = Hosted(defn, settings)
    await hosted.start()
    nc = await bus.connect(nats_server.url, name="sales-tests")
    channel = grpc.aio.insecure_channel(hosted.address)
    contacts_channel = grpc.aio.insecure_channel(contacts_service.address)
    try:
        yield Running(
            channel=channel,
            stub=sales_pb2_grpc.SalesServiceStub(channel),
            contacts=contacts_pb2_grpc.ContactsServiceStub(contacts_channel),
            clock=clock,
            js=nc.jetstream(),
            admin_url=postgres.url(name),
        )
    finally:
        await hosted.stop()
        await channel.close()
        await contacts_channel.close()
        await nc.close()
        del os.environ["SALES_CONTACTS_ADDR"]
        postgres.drop_database(name)


@pytest.fixture
def tenant() -> Tenant:
    return Tenant(str(uuid.uuid4()))


@pytest.fixture
def other_tenant() -> Tenant:
    return Tenant(str(uuid.uuid4()))
