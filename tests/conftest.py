"""End-to-end fixtures: the real services as processes, over the session's PostgreSQL and NATS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.helpers import Platform, Tenant, new_tenant
from trellis_devstack.infra import Nats, Postgres
from trellis_devstack.stack import Stack


@pytest.fixture(scope="session")
def platform(
    postgres: Postgres, nats_server: Nats, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    stack = Stack.ephemeral(postgres, nats_server.url, db_prefix=f"e2e_{uuid.uuid4().hex[:6]}_")
    running = Platform(stack, tmp_path_factory.mktemp("logs"))
    running.start_all()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def tenant(platform: Platform) -> Tenant:
    return new_tenant(platform)


@pytest.fixture
def other_tenant(platform: Platform) -> Tenant:
    return new_tenant(platform)


@pytest.fixture
async def api(tenant: Tenant) -> AsyncIterator[httpx.AsyncClient]:
    async with tenant.client() as client:
        yield client
