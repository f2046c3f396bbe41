"""Health: NOT_SERVING while migrations are pending, SERVING once they are applied."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from crmkit import migrations
from crmkit.service import serve
from trellis_contacts.app import DEFINITION
from trellis_devstack.infra import Nats
from trellis_devstack.probes import health_status, wait_for_health

from .support import Running, settings_for

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


async def test_reflection_answers_v1_and_v1alpha(service: Running) -> None:
    # v1's messages are v1alpha's on the wire; what differs is the path grpcurl and newer
    # clients call.
    for version in ("v1", "v1alpha"):
        call = service.channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in call(iter([ask]))]
        names = {s.name for s in responses[0].list_services_response.service}
        assert "crm.contacts.v1.ContactsService" in names, version
        assert "grpc.reflection.v1.ServerReflection" in names
