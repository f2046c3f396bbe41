"""Partner webhooks end to end: an endpoint registered through the gateway's REST API receives
the contact created through it, signed, from the real notify process."""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.helpers import Platform, Tenant
from trellis_devstack.infra import free_port


async def test_a_contact_created_through_the_gateway_reaches_the_partners_endpoint(
    platform: Platform, tenant: Tenant
) -> None:
    got: list[tuple[dict[str, str], bytes]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        arrived.set()
        return web.Response(text="thanks")

    app = web.Application()
    app.router.add_post("/hooks", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with tenant.client() as api:
            made = await api.post(
                "/v1/webhooks",
                json={
                    "url": f"http://127.0.0.1:{port}/hooks",  # developmentEnv allows it here
                    "event_types": ["crm.contacts.contact.*"],
                },
            )
            assert made.status_code == 201, made.text
            secret = made.json()["secret"]
            read = await api.get(f"/v1/webhooks/{made.json()['id']}")
            assert read.json().get("secret", "") == ""  # shown once
            email = f"ada.{uuid.uuid4().hex[:8]}@example.com"
            contact = await api.post("/v1/contacts", json={"first_name": "Ada", "emails": [email]})
            assert contact.status_code == 201, contact.text

            await asyncio.wait_for(arrived.wait(), 30)
            headers, body = got[0]
            event = Webhook(secret).verify(body, headers)
            assert event["type"] == "crm.contacts.contact.created.v1"
            assert event["data"]["contact"]["id"] == contact.json()["id"]

            log = await api.get(f"/v1/webhooks/{made.json()['id']}/deliveries")
            assert log.status_code == 200, log.text
            [delivery] = log.json()["deliveries"]
            assert delivery["event_id"] == headers["webhook-id"]

            bad = await api.post("/v1/webhooks", json={"url": "ftp://x", "event_types": ["*"]})
            assert bad.status_code == 400
            assert bad.headers["content-type"].startswith("application/problem+json")
            assert [e["field"] for e in bad.json()["errors"]] == ["webhook.url"]
    finally:
        await runner.cleanup()
