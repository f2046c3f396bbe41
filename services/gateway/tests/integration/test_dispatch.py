"""Backend failures as callers see them, over a real gRPC backend: statuses, details, transport
failures, and each backend's health as the backend reports it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from crm.contacts.v1 import contacts_pb2
from crmkit import idempotency
from crmkit.context import Identity
from crmkit.errors import (
    Conflict,
    Duplicate,
    FailedPrecondition,
    Invalid,
    NotFound,
    ServiceError,
    StaleEtag,
    Unavailable,
)
from trellis_devstack.testing import eventually
from trellis_gateway.dispatch import BackendHealth, BadGateway

from .support import FakeContacts, GatewayDb, Harness, ManualClock, answers, fails_with, harness

CONTACT_ID = "01900000-0000-7000-8000-000000000001"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize(
    ("error", "status", "field"),
    [
        (Invalid([("emails[0]", "not an email address")]), 400, "emails[0]"),
        (NotFound("contact", CONTACT_ID), 404, ""),
        (StaleEtag("contact"), 412, ""),
        (idempotency.key_reused(), 422, "idempotency-key"),
        (FailedPrecondition("the company is archived"), 409, ""),
        (Duplicate("the email is taken", "emails"), 409, "emails"),
        (Conflict("conflict with a concurrent change; retry"), 409, ""),
        (ServiceError(grpc.StatusCode.PERMISSION_DENIED, "needs contacts:read"), 403, ""),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, ServiceError) else str(v),
)
async def test_a_service_error_keeps_its_status_message_and_fields(
    gw: Harness, contacts: FakeContacts, error: ServiceError, status: int, field: str
) -> None:
    contacts.answers["GetContact"] = fails_with(error)
    _, key = await gw.tenant(("contacts:read",))
    async with gw.client(key) as api:
        r = await api.get(f"/v1/contacts/{CONTACT_ID}")
    assert r.status_code == status, r.text
    problem = r.json()
    assert (problem["status"], problem["detail"]) == (status, error.message)
    if field:
        assert [e["field"] for e in problem["errors"]] == [field]


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (Unavailable("database unavailable, retry later"), 503, "database unavailable"),
        (ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down"), 429, "slow down"),
        (ServiceError(grpc.StatusCode.INTERNAL, "boom at /srv/app.py:12"), 500, "internal"),
    ],
)
async def test_server_side_failures(
    gw: Harness, contacts: FakeContacts, error: ServiceError, status: int, detail: str
) -> None:
    contacts.answers["GetContact"] = fails_with(error)
    _, key = await gw.tenant(("contacts:read",))
    async with gw.client(key) as api:
        r = await api.get(f"/v1/contacts/{CONTACT_ID}")
    assert r.status_code == status
    assert r.json()["detail"].startswith(detail)
    assert ("retry-after" in r.headers) is (status in (429, 503))
    assert "/srv" not in r.text


async def test_transport_failures_get_plain_messages(gw: Harness, contacts: FakeContacts) -> None:
    _, key = await gw.tenant(("contacts:read",))
    await contacts.stop()
    async with gw.client(key) as api:
        r = await api.get(f"/v1/contacts/{CONTACT_ID}")
    assert r.status_code == 503
    assert r.json()["detail"] == "the service is unavailable; retry later"
    assert int(r.headers["retry-after"]) >= 1
    assert contacts.address not in r.text


async def test_a_backend_that_does_not_answer_in_time_is_504(
    pool: Any, gateway_db: GatewayDb, clock: ManualClock, contacts: FakeContacts
) -> None:
    never = asyncio.Event()

    async def hang(_: Message, __: Any) -> Message:
        await never.wait()
        raise AssertionError("unreachable")

    contacts.answers["GetContact"] = hang
    slow = harness(pool, gateway_db.app_url, clock, backend_timeout_seconds=0.3)
    try:
        _, key = await slow.tenant(("contacts:read",))
        async with slow.client(key) as api:
            r = await api.get(f"/v1/contacts/{CONTACT_ID}")
        assert r.status_code == 504
        assert r.json()["detail"] == "the service did not answer in time; retry later"
    finally:
        await slow.close()


async def test_an_answer_too_large_for_the_channel_is_502_with_a_plain_message(
    gw: Harness, contacts: FakeContacts
) -> None:
    page = contacts_pb2.ListContactsResponse(
        contacts=[
            contacts_pb2.Contact(id=str(uuid.uuid4()), first_name="x" * 10_000) for _ in range(500)
        ]
    )
    contacts.answers["ListContacts"] = answers(page)
    tenant_id, key = await gw.tenant(("contacts:read",))
    async with gw.client(key) as api:
        r = await api.get("/v1/contacts")
    assert r.status_code == 502
    assert r.json()["detail"] == "the service's answer was too large to pass on"
    assert "larger than max" not in r.text

    # gRPC callers get INTERNAL with the same plain message.
    caller = Identity(tenant_id, "key:x", frozenset({"contacts:read"}))
    route = next(r for r in gw.parts.routes if r.full_method.endswith("/ListContacts"))
    with pytest.raises(BadGateway) as refused:
        await gw.parts.dispatcher.call(
            route.full_method, route.request_class(), route.response_class, caller, "rid"
        )
    assert refused.value.code == grpc.StatusCode.INTERNAL


async def test_backend_health_is_watched_and_mirrored_under_its_service_names(
    gw: Harness, contacts: FakeContacts
) -> None:
    mirrored: dict[str, int] = {}

    async def publish(name: str, status: int) -> None:
        mirrored[name] = status

    watcher = BackendHealth(gw.parts.dispatcher.backends, publish)
    running = asyncio.create_task(watcher.run())
    name = "crm.contacts.v1.ContactsService"

    async def reported(status: int) -> bool:
        return mirrored.get(name) == status and watcher.statuses()["contacts"] == (
            health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        )

    try:
        await contacts.health.set("", NOT_SERVING)
        await eventually(lambda: reported(NOT_SERVING), "NOT_SERVING at first", within=30)
        await contacts.health.set("", SERVING)
        await eventually(lambda: reported(SERVING), "SERVING once the backend is", within=30)
        await contacts.stop()
        await eventually(lambda: reported(NOT_SERVING), "NOT_SERVING once it stops", within=30)
        await contacts.start()
        await contacts.health.set("", SERVING)
        await eventually(lambda: reported(SERVING), "SERVING once it is back", within=30)
    finally:
        await watcher.stop()
        await running
