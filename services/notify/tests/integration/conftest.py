"""The real notify service, in-process, over a real gRPC channel, on PostgreSQL and NATS.

One service for the package, with a clock the tests move and a NATS server of its own: the
service's durable consumers take every event of their stream, so another notify in the same
session (the end-to-end platform's) must not share the stream with it. Every test works in
tenants of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest

from crm.contacts.v1 import contacts_pb2_grpc
from crm.notify.v1 import notify_pb2_grpc
from crmkit import auth
from trellis_contacts.app import DEFINITION as CONTACTS
from trellis_contacts.config import ContactsSettings
from trellis_devstack import testing
from trellis_devstack.capture import Mailbox
from trellis_devstack.infra import Nats, Postgres, free_port
from trellis_notify.app import definition
from trellis_notify.campaigns import READ_CONTACTS

from .support import KEY, NOTIFY_KEY, Clock, Contacts, Receiver, Running, Tenant, settings_for


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
async def contacts(postgres: Postgres, notify_nats: Nats) -> AsyncIterator[Contacts]:
    """The real contacts service, publishing to notify's NATS, trusting notify's own key."""
    name = f"contacts_{uuid.uuid4().hex[:8]}"
    app_url = await testing.migrated_database(postgres, CONTACTS, name)
    settings = ContactsSettings.model_validate(
        {
            "database_url": app_url,
            "bind_host": "127.0.0.1",
            "grpc_port": free_port(),
            "metrics_port": 0,
            "shutdown_grace_seconds": 2,
            "NATS_URL": notify_nats.url,
            "INTERNAL_TOKEN_PUBLIC_KEYS": auth.jwks(
                KEY.public_jwk(), NOTIFY_KEY.public_jwk([READ_CONTACTS])
            ),
        }
    )
    try:
        async with testing.served(CONTACTS, settings) as served:
            yield Contacts(served.address, contacts_pb2_grpc.ContactsServiceStub(served.channel))
    finally:
        postgres.drop_database(name)


@pytest.fixture(scope="session")
async def service(
    postgres: Postgres, notify_nats: Nats, mailbox: Mailbox, contacts: Contacts
) -> AsyncIterator[Running]:
    name = f"notify_{uuid.uuid4().hex[:8]}"
    clock = Clock()
    defn = definition(clock=clock)
    app_url = await testing.migrated_database(postgres, defn, name)
    settings = settings_for(
        app_url,
        notify_nats.url,
        mailbox.port,
        INTERNAL_TOKEN_PRIVATE_KEY=NOTIFY_KEY.pem(),
        INTERNAL_TOKEN_KEY_ID=NOTIFY_KEY.kid,
    )
    nc = await nats.connect(notify_nats.url)
    # As the chart and devstack set it for the notify -> contacts edge (read when wiring).
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NOTIFY_CONTACTS_ADDR", contacts.address)
        try:
            async with testing.served(defn, settings) as served:
                yield Running(
                    address=served.address,
                    channel=served.channel,
                    stub=notify_pb2_grpc.NotifyServiceStub(served.channel),
                    js=nc.jetstream(),
                    clock=clock,
                    admin_url=postgres.url(name),
                    public_url=settings.public_base_url(),
                )
        finally:
            await nc.close()
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
