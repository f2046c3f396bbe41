"""The README's notify quick start over the real processes: a webhook, a template and a rule
made through the gateway, then a contact created with the key; the partner's endpoint gets
the event and the contact gets the welcome mail, whose one-click unsubscribe link works."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest

from tests.helpers import Platform, Tenant
from trellis_devstack.capture import Mailbox
from trellis_devstack.infra import free_port
from trellis_devstack.testing import eventually


@pytest.fixture
async def mailbox(platform: Platform) -> AsyncIterator[Mailbox]:
    """The capture mailbox, and notify started again to send to it."""
    box = Mailbox(free_port())
    await box.start()
    platform.stop("notify")
    platform.start("notify", {"NOTIFY_SMTP_SERVER": f"127.0.0.1:{box.port}"})
    yield box
    await box.stop()


async def test_a_new_contact_gets_a_webhook_and_a_welcome_mail(
    platform: Platform, tenant: Tenant, mailbox: Mailbox
) -> None:
    hooks: list[dict[str, object]] = []

    async def receive(request: aiohttp.web.Request) -> aiohttp.web.Response:
        hooks.append(await request.json())
        return aiohttp.web.Response(text="ok")

    app = aiohttp.web.Application()
    app.router.add_post("/hooks", receive)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with tenant.client() as api:
            await _until_serving(api)
            made = await api.post(
                "/v1/webhooks",
                json={"url": f"http://127.0.0.1:{port}/hooks", "event_types": ["crm.contacts.*"]},
            )
            assert made.status_code == 201, made.text
            template = await api.post(
                "/v1/templates",
                json={
                    "name": "Welcome",
                    "contents": [
                        {
                            "locale": "en",
                            "subject": "Welcome, {{ contact.first_name }}!",
                            "text": "Hello {{ contact.first_name }}.",
                        }
                    ],
                },
            )
            assert template.status_code == 201, template.text
            rule = await api.post(
                "/v1/rules",
                json={
                    "name": "Welcome new contacts",
                    "event_type": "crm.contacts.contact.created.v1",
                    "action": {
                        "template_id": template.json()["id"],
                        "recipient": "RECIPIENT_KIND_CONTACT",
                    },
                },
            )
            assert rule.status_code == 201, rule.text
            address = f"ada.{uuid.uuid4().hex[:8]}@example.com"
            contact = await api.post(
                "/v1/contacts", json={"first_name": "Ada", "emails": [address]}
            )
            assert contact.status_code == 201, contact.text

            await eventually(lambda: hooks, "a webhook", within=30)
            assert hooks[0]["type"] == "crm.contacts.contact.created.v1"
            await eventually(lambda: mailbox.to(address), "the welcome mail", within=30)
            [mail] = mailbox.to(address)
            assert mail["Subject"] == "Welcome, Ada!"

            link = mail["List-Unsubscribe"].strip("<>")
            async with (
                aiohttp.ClientSession() as http,
                http.post(link, data="List-Unsubscribe=One-Click") as done,
            ):
                assert done.status == 200
            listed = await api.get("/v1/suppressions")
            assert [s["email"] for s in listed.json()["suppressions"]] == [address]
            emails = await api.get("/v1/emails")
            assert [e["status"] for e in emails.json()["emails"]] == ["EMAIL_STATUS_SENT"]
    finally:
        await runner.cleanup()


async def _until_serving(api: httpx.AsyncClient) -> None:
    """notify was restarted: wait until the gateway reaches it again."""

    async def serving() -> bool:
        return (await api.get("/v1/webhooks")).status_code == 200

    await eventually(serving, "notify to come back", within=30)
