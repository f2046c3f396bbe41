"""A write through the gateway becomes exactly one CloudEvent on NATS, in the request's trace."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.helpers import Platform, Tenant


@asynccontextmanager
async def _events(
    platform: Platform, subject: str
) -> AsyncIterator[JetStreamContext.PushSubscription]:
    """Every event on `subject` from the start of the stream, in order, on its own connection."""
    nc = await nats.connect(platform.stack.nats_url)
    try:
        sub = await nc.jetstream().subscribe(
            subject,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        yield sub
        await sub.unsubscribe()
    finally:
        await nc.close()


async def _before_marker(
    sub: JetStreamContext.PushSubscription, api: httpx.AsyncClient
) -> list[Msg]:
    """The events that arrive before a contact created now: the relay publishes in commit
    order, so a late duplicate of an earlier event would come before the marker's."""
    marker = (await api.post("/v1/contacts", json={"first_name": "Marker"})).json()["id"]
    before = []
    while (msg := await sub.next_msg(timeout=20)).headers.get("ce-subject") != marker:  # type: ignore[union-attr]
        before.append(msg)
    return before


async def test_create_publishes_one_cloudevent_in_the_same_trace(
    platform: Platform, tenant: Tenant
) -> None:
    async with _events(platform, f"crm.events.{tenant.id}.contacts.contact.created") as sub:
        trace_id = secrets.token_hex(16)
        traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        async with tenant.client() as api:
            made = await api.post(
                "/v1/contacts",
                json={"first_name": "Evie", "emails": [f"evie.{uuid.uuid4().hex[:8]}@example.com"]},
                headers={"traceparent": traceparent},
            )
        assert made.status_code == 201, made.text
        contact = made.json()

        msg = await sub.next_msg(timeout=20)
        headers = msg.headers or {}
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-type"] == "crm.contacts.contact.created.v1"
        assert headers["ce-source"] == "/trellis/contacts"
        assert headers["ce-subject"] == contact["id"]
        assert headers["ce-tenantid"] == tenant.id
        assert headers["Nats-Msg-Id"] == headers["ce-id"]
        assert headers["ce-time"].endswith("Z")
        # The event continues the trace the client started at the gateway.
        assert headers["traceparent"].split("-")[1] == trace_id
        data = json.loads(msg.data)
        assert data["contact"]["id"] == contact["id"]
        assert data["contact"]["version"] == "1"

        # Exactly one: nothing else arrives for this tenant's creates.
        async with tenant.client() as api:
            extra = await _before_marker(sub, api)
        assert extra == [], f"a second event arrived: {[m.headers for m in extra]}"


async def test_update_and_delete_events_carry_versions(platform: Platform, tenant: Tenant) -> None:
    async with _events(platform, f"crm.events.{tenant.id}.contacts.contact.>") as sub:
        async with tenant.client() as api:
            cid = (await api.post("/v1/contacts", json={"first_name": "V"})).json()["id"]
            await api.patch(f"/v1/contacts/{cid}", json={"last_name": "Two"})
            await api.delete(f"/v1/contacts/{cid}")
        got = []
        for _ in range(3):
            msg = await sub.next_msg(timeout=20)
            got.append((msg.headers or {})["ce-type"])
            body = json.loads(msg.data)
            if got[-1].endswith("updated.v1"):
                assert body["contact"]["version"] == "2"
                assert body["changed_fields"] == ["last_name"]
            if got[-1].endswith("deleted.v1"):
                assert body["id"] == cid
                assert body["version"] == "3"
        assert got == [
            "crm.contacts.contact.created.v1",
            "crm.contacts.contact.updated.v1",
            "crm.contacts.contact.deleted.v1",
        ]


async def test_idempotent_replay_publishes_no_second_event(
    platform: Platform, tenant: Tenant
) -> None:
    async with (
        _events(platform, f"crm.events.{tenant.id}.contacts.contact.created") as sub,
        tenant.client() as api,
    ):
        headers = {"Idempotency-Key": "once"}
        for _ in range(3):
            r = await api.post("/v1/contacts", json={"first_name": "Once"}, headers=headers)
            assert r.status_code == 201
        await sub.next_msg(timeout=20)
        assert await _before_marker(sub, api) == []
