"""Health: NOT_SERVING while migrations are pending, SERVING once they are applied."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

import grpc
from grpc_health.v1 import health_pb2

from crmkit import migrations
from crmkit.service import serve
from trellis_contacts.app import DEFINITION
from trellis_devstack.infra import Nats
from trellis_devstack.probes import health_status, wait_for_health

from .support import settings_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_serving_only_once_migrations_are_applied(
    fresh_db: tuple[str, str], nats_server: Nats
) -> None:
    owner_url, app_url = fresh_db
    settings = settings_for(app_url, nats_server.url)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(DEFINITION, settings, stop))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}")
    try:
        await wait_for_health(channel, NOT_SERVING)
        service_name = DEFINITION.grpc_services[0]
        assert await health_status(channel, service_name) == NOT_SERVING

        app_role = f"{urlparse(owner_url).path.lstrip('/')}_app"
        await migrations.migrate(owner_url, DEFINITION.migrations(), app_role)

        await wait_for_health(channel, SERVING)
        assert await health_status(channel, service_name) == SERVING
    finally:
        stop.set()
        await task
        await channel.close()
