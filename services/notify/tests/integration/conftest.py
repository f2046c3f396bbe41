"""The real notify service, in-process, over a real gRPC channel, on PostgreSQL and NATS.

One service for the package, with a clock the tests move and a NATS server of its own: the
service's durable consumers take every event of their stream, so another notify in the same
session (the end-to-end platform's) must not share the stream with it. Every test works in
tenants of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2

from crm.notify.v1 import notify_pb2_grpc
from crmkit import migrations
from crmkit.service import serve
from trellis_devstack.capture import Mailbox
from trellis_devstack.infra import Nats, Postgres, free_port
from trellis_devstack.probes import wait_for_health
from trellis_notify.app import definition

from .support import Clock, Receiver, Running, Tenant, settings_for


@pytest.fixture(scope="session")
def notify_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    server = Nats(tmp_path_factory.mktemp("notify-nats"))
    server.start()
    yield server
    server.stop()


# Addresses at this domain are refused for good by the mailbox, as unknown users are.
BOUNCING = "@bounce.example"


@pytest.fixture(scope="session")
async def mailbox() -> AsyncIterator[Mailbox]:
    box = Mailbox(free_port(), refuse=lambda address: address.endswith(BOUNCING))
    await box.start()
    yield box
    await box.stop()


@pytest.fixture(scope="session")
async def service(
    postgres: Postgres, notify_nats: Nats, mailbox: Mailbox
) -> AsyncIterator[Running]:
    name = f"notify_{uuid.uuid4().hex[:8]}"
    owner_url, app_url = postgres.create_database(name)
    clock = Clock()
    defn = definition(clock=clock)
    await migrations.migrate(owner_url, defn.migrations(), f"{name}_app")
    settings = settings_for(app_url, notify_nats.url, mailbox.port)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(defn, settings, stop))
    address = f"127.0.0.1:{settings.grpc_port}"
    channel = grpc.aio.insecure_channel(address)
    nc = await nats.connect(notify_nats.url)
    try:
        await wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)
        yield Running(
            address=address,
            channel=channel,
            stub=notify_pb2_grpc.NotifyServiceStub(channel),
            js=nc.jetstream(),
            clock=clock,
            admin_url=postgres.url(name),
            public_url=settings.public_base_url(),
        )
    finally:
        stop.set()
        await task
        await nc.close()
        await channel.close()
        postgres.drop_database(name)


@pytest.fixture(autouse=True)
def _real_time(service: Running) -> Iterator[None]:
    yield
    service.clock.thaw()


@pytest.fixture
def tenant() -> Tenant:
    return Tenant(str(uuid.uuid4()))


@pytest.fixture
def other_tenant() -> Tenant:
    return Tenant(str(uuid.uuid4()))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    partner = Receiver()
    await partner.start()
    yield partner
    await partner.stop()
