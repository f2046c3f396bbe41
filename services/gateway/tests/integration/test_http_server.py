"""The gateway's HTTP server as it runs (uvicorn with the gateway's protocol and proxy
settings), and the server spans of the REST app."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from crmkit import db
from trellis_devstack.infra import free_port
from trellis_gateway.config import GatewaySettings, Network
from trellis_gateway.http_server import HttpServer

from .support import BOOTSTRAP, GatewayDb, Harness, ManualClock, harness


@asynccontextmanager
async def serving(gw: Harness, proxies: Sequence[Network] = ()) -> AsyncIterator[str]:
    port = free_port()
    settings: GatewaySettings = gw.settings
    server = HttpServer(
        gw.app,
        "127.0.0.1",
        port,
        1,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        keep_alive_seconds=settings.keep_alive_seconds,
        trusted_proxies=proxies,
    )
    running = asyncio.create_task(server.run())
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as probe:
        while True:
            try:
                await probe.get("/healthz")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.02)
    try:
        yield url
    finally:
        await server.stop()
        await running


async def raw_request(url: str, head: bytes) -> tuple[int, bytes]:
    """Send a request head as bytes (no client library would send these) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def _get(*headers: bytes) -> bytes:
    return b"GET /v1/api-keys HTTP/1.1\r\nHost: gw\r\n" + b"".join(headers) + b"\r\n"


@pytest.mark.parametrize(
    ("case", "headers"),
    [
        ("a 1 MB header", [b"X-Big: " + b"a" * 1_048_576 + b"\r\n"]),
        ("an 8 MB header", [b"X-Big: " + b"a" * 8 * 1_048_576 + b"\r\n"]),
        ("10,000 headers", [b"X-%d: a\r\n" % i for i in range(10_000)]),
        ("40 headers of 1 KB", [b"X-%d: %s\r\n" % (i, b"b" * 1000) for i in range(40)]),
    ],
)
async def test_oversized_request_heads_are_431(
    gw: Harness, case: str, headers: list[bytes]
) -> None:
    async with serving(gw) as url:
        status, body = await raw_request(url, _get(*headers))
        assert status == 431, case
        problem = json.loads(body)
        assert problem["status"] == 431
        assert problem["request_id"]
        # The server is still there for the next caller.
        status, _ = await raw_request(url, _get(b"Connection: close\r\n"))
        assert status == 401


async def test_heads_within_the_limits_are_served(gw: Harness) -> None:
    _, key = await gw.tenant()
    many = [b"X-%d: a\r\n" % i for i in range(gw.settings.max_headers - 3)]
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n"
    async with serving(gw) as url:
        status, _ = await raw_request(url, _get(auth, *many, b"Connection: close\r\n"))
    assert status == 200


async def _authentication_failures_until_refused(url: str, forwarded_for: str) -> int:
    async with httpx.AsyncClient(base_url=url) as client:
        for attempt in range(1, 100):
            r = await client.get(
                "/v1/api-keys",
                headers={"Authorization": "Bearer wrong", "X-Forwarded-For": forwarded_for},
            )
            if r.status_code == 429:
                return attempt
    raise AssertionError("never refused")


async def test_x_forwarded_for_names_the_client_only_behind_a_trusted_proxy(
    pool: db.Pool, gateway_db: GatewayDb, clock: ManualClock
) -> None:
    burst = 3
    for proxies, spoofed_is_trusted in (
        ((), False),
        ((ipaddress.ip_network("127.0.0.0/8"),), True),
    ):
        gw = harness(pool, gateway_db.app_url, clock, rate_limit_address_burst=burst)
        try:
            async with serving(gw, proxies) as url:
                first = await _authentication_failures_until_refused(url, "203.0.113.1")
                # Another forwarded address: a new client behind a trusted proxy, otherwise
                # the same peer (127.0.0.1) trying to pass for someone else.
                second = await _authentication_failures_until_refused(url, "203.0.113.2")
            assert first == burst + 1
            assert second == (burst + 1 if spoofed_is_trusted else 1)
        finally:
            await gw.close()


async def test_server_spans_are_named_after_the_route_template(
    pool: db.Pool, gateway_db: GatewayDb, clock: ManualClock
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw = harness(pool, gateway_db.app_url, clock, tracer_provider=provider)
    try:
        async with gw.client(BOOTSTRAP) as op:
            for _ in range(2):
                assert (await op.get(f"/v1/tenants/{uuid.uuid4()}")).status_code == 404
            assert (await op.get("/v1/no/such/thing")).status_code == 404
            assert (await op.get("/v1/openapi.json")).status_code == 200
    finally:
        await gw.close()
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.name for s in spans] == [
        "GET /v1/tenants/{id}",
        "GET /v1/tenants/{id}",
        "GET",
        "GET /v1/openapi.json",
    ]
    assert [(s.attributes or {}).get("http.route") for s in spans] == [
        "/v1/tenants/{id}",
        "/v1/tenants/{id}",
        None,
        "/v1/openapi.json",
    ]
