"""Email end to end within notify: templates checked and previewed, sends rendered and
delivered to a real SMTP server, per-recipient status, one-click unsubscribe that works,
bounces, consent and suppression honoured."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import struct_pb2

from crm.notify.v1 import notify_pb2
from crmkit.errors import violations_of
from crmkit.ids import new_id
from trellis_devstack.capture import Mailbox
from trellis_devstack.testing import eventually, failure

from .support import Running, Tenant
from .test_audience import publish_consent, publish_contact

WELCOME = notify_pb2.Template(
    name="Welcome",
    contents=[
        notify_pb2.TemplateContent(
            locale="en",
            subject="Welcome, {{ contact.first_name }}!",
            text="Hello {{ contact.first_name }}, your code is {{ vars.code }}.\nUnsubscribe: {{ unsubscribe_url }}",
            html="<p>Hello {{ contact.first_name }}</p>",
        ),
        notify_pb2.TemplateContent(
            locale="de",
            subject="Willkommen, {{ contact.first_name }}!",
            text="Hallo {{ contact.first_name }}",
        ),
    ],
)


async def _template(
    service: Running, tenant: Tenant, template: notify_pb2.Template = WELCOME
) -> notify_pb2.Template:
    return await service.stub.CreateTemplate(
        notify_pb2.CreateTemplateRequest(template=template), metadata=tenant.md()
    )


async def _contact(service: Running, tenant: Tenant, email: str, first_name: str = "Ada") -> str:
    contact_id = new_id()
    await publish_contact(
        service, tenant, contact_id, 1, email, action="created", first_name=first_name
    )
    await eventually(
        lambda: service.query(
            "SELECT 1 FROM contacts WHERE tenant_id = %s AND id = %s", tenant.id, contact_id
        ),
        what="the contact in notify's projection",
    )
    return contact_id


async def _send(service: Running, tenant: Tenant, **fields: Any) -> notify_pb2.Email:
    return await service.stub.SendEmail(notify_pb2.SendEmailRequest(**fields), metadata=tenant.md())


async def _status(
    service: Running, tenant: Tenant, email_id: str, status: int
) -> notify_pb2.Email | None:
    got = await service.stub.GetEmail(notify_pb2.GetEmailRequest(id=email_id), metadata=tenant.md())
    return got if got.status == status else None


def _vars(**values: Any) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


async def test_a_template_is_sent_to_a_contact_with_one_click_unsubscribe(
    service: Running, tenant: Tenant, mailbox: Mailbox
) -> None:
    template = await _template(service, tenant)
    assert (template.purpose, template.default_locale) == ("transactional_email", "en")
    address = f"ada.{new_id()[:8]}@example.com"
    contact_id = await _contact(service, tenant, address, first_name="<Ada>")
    queued = await _send(
        service, tenant, template_id=template.id, contact_id=contact_id, vars=_vars(code="42")
    )
    assert queued.status == notify_pb2.EMAIL_STATUS_QUEUED
    assert (queued.to, queued.subject, queued.origin) == (address, "Welcome, <Ada>!", "api")

    sent = await eventually(
        lambda: _status(service, tenant, queued.id, notify_pb2.EMAIL_STATUS_SENT), what="sent"
    )
    assert sent.HasField("send_time")
    [mail] = mailbox.to(address)
    assert mail["Subject"] == "Welcome, <Ada>!"
    assert mail["From"] == "Trellis Test <notify@test.example>"
    assert mail["Message-ID"] == f"<{queued.id}@127.0.0.1>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = mail["List-Unsubscribe"].strip("<>")
    # As sent: angle brackets around the plain URL, one line (no encoded word, no folding).
    [raw] = [r for r in mailbox.raw if address.encode() in r]
    assert f"List-Unsubscribe: <{link}>\r\n".encode() in raw
    assert link.startswith(f"{service.public_url}/unsubscribe/")
    plain, rich = mail.get_body(("plain",)), mail.get_body(("html",))
    assert plain is not None
    assert rich is not None
    text, html = plain.get_content(), rich.get_content()
    assert "your code is 42." in text
    assert link in text
    assert "<p>Hello &lt;Ada&gt;</p>" in html  # values are escaped in HTML

    async with aiohttp.ClientSession() as http:
        async with http.get(link) as page:  # a link scanner: shows a form, changes nothing
            assert page.status == 200
            assert "<form" in await page.text()
        listed = await service.stub.ListSuppressions(
            notify_pb2.ListSuppressionsRequest(), metadata=tenant.md()
        )
        assert list(listed.suppressions) == []
        async with http.post(link[:-3] + "xyz", data="List-Unsubscribe=One-Click") as forged:
            assert forged.status == 404
        async with http.post(
            link,
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as done:
            assert done.status == 200
    listed = await service.stub.ListSuppressions(
        notify_pb2.ListSuppressionsRequest(), metadata=tenant.md()
    )
    assert [(s.email, s.purpose, s.reason) for s in listed.suppressions] == [
        (address, "transactional_email", notify_pb2.SUPPRESSION_REASON_UNSUBSCRIBED)
    ]

    # Unsubscribed: the next one is not sent.
    again = await _send(service, tenant, template_id=template.id, contact_id=contact_id)
    assert again.status == notify_pb2.EMAIL_STATUS_SUPPRESSED
    assert again.error == "suppressed (unsubscribed)"
    assert len(mailbox.to(address)) == 1


async def test_locales_fall_back_to_the_language_then_the_default(
    service: Running, tenant: Tenant
) -> None:
    template = await _template(service, tenant)
    for asked, subject in (
        ("de-CH", "Willkommen, Bo!"),
        ("DE", "Willkommen, Bo!"),
        ("fr", "Welcome, Bo!"),
        ("", "Welcome, Bo!"),
    ):
        shown = await service.stub.PreviewTemplate(
            notify_pb2.PreviewTemplateRequest(
                id=template.id, locale=asked, variables=_vars(contact={"first_name": "Bo"})
            ),
            metadata=tenant.md(),
        )
        assert shown.subject == subject, asked


async def test_bounces_suppress_the_address_and_marketing_needs_consent(
    service: Running, tenant: Tenant, mailbox: Mailbox
) -> None:
    template = await _template(service, tenant)
    queued = await _send(service, tenant, template_id=template.id, to="nobody@bounce.example")
    bounced = await eventually(
        lambda: _status(service, tenant, queued.id, notify_pb2.EMAIL_STATUS_BOUNCED),
        what="the bounce",
    )
    assert bounced.error.startswith("550")
    listed = await service.stub.ListSuppressions(
        notify_pb2.ListSuppressionsRequest(), metadata=tenant.md()
    )
    assert [(s.email, s.purpose, s.reason) for s in listed.suppressions] == [
        ("nobody@bounce.example", "", notify_pb2.SUPPRESSION_REASON_BOUNCED)
    ]

    marketing = notify_pb2.Template()
    marketing.CopyFrom(WELCOME)
    marketing.purpose = "marketing_email"
    news = await _template(service, tenant, marketing)
    address = f"cy.{new_id()[:8]}@example.com"
    contact_id = await _contact(service, tenant, address)
    refused = await _send(service, tenant, template_id=news.id, contact_id=contact_id)
    assert (refused.status, refused.error) == (
        notify_pb2.EMAIL_STATUS_SUPPRESSED,
        "no consent to marketing_email",
    )
    await publish_consent(service, tenant, new_id(), contact_id, 1, "marketing_email", "granted")
    await eventually(
        lambda: service.query("SELECT 1 FROM consents WHERE tenant_id = %s", tenant.id),
        what="the consent",
    )
    allowed = await _send(service, tenant, template_id=news.id, contact_id=contact_id)
    await eventually(
        lambda: _status(service, tenant, allowed.id, notify_pb2.EMAIL_STATUS_SENT), what="sent"
    )
    assert len(mailbox.to(address)) == 1


async def _invalid(call: Awaitable[object]) -> list[str]:
    err = await failure(call)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    return [f for f, _ in violations_of(err)]


@pytest.mark.parametrize(
    ("template", "fields"),
    [
        (notify_pb2.Template(), ["template.name", "template.contents"]),
        (
            notify_pb2.Template(
                name="T", contents=[notify_pb2.TemplateContent(locale="en", subject="Hi {{ x ")]
            ),
            ["template.contents[0]", "template.contents[0].subject"],
        ),
        (
            notify_pb2.Template(
                name="T",
                contents=[notify_pb2.TemplateContent(locale="en", subject="Hi", html="{% for %}")],
            ),
            ["template.contents[0].html"],
        ),
        (
            notify_pb2.Template(
                name="T",
                contents=[
                    notify_pb2.TemplateContent(locale="en", subject="Hi", text="a"),
                    notify_pb2.TemplateContent(locale="EN", subject="Hi", text="b"),
                    notify_pb2.TemplateContent(locale="not a locale", subject="Hi", text="c"),
                ],
            ),
            ["template.contents[1].locale", "template.contents[2].locale"],
        ),
        (
            notify_pb2.Template(
                name="T",
                purpose="Marketing!",
                contents=[notify_pb2.TemplateContent(locale="en", subject="Hi", text="a")],
            ),
            ["template.purpose"],
        ),
        (
            notify_pb2.Template(
                name="T",
                default_locale="fr",
                contents=[notify_pb2.TemplateContent(locale="en", subject="Hi", text="a")],
            ),
            ["template.default_locale"],
        ),
        (
            notify_pb2.Template(
                name="T",
                contents=[notify_pb2.TemplateContent(locale="en", subject="a\nb", text="x")],
            ),
            ["template.contents[0].subject"],
        ),
    ],
)
async def test_bad_templates_are_refused_naming_the_fields(
    service: Running, tenant: Tenant, template: notify_pb2.Template, fields: list[str]
) -> None:
    got = await _invalid(
        service.stub.CreateTemplate(
            notify_pb2.CreateTemplateRequest(template=template), metadata=tenant.md()
        )
    )
    assert got == fields


async def test_syntax_errors_name_their_line(service: Running, tenant: Tenant) -> None:
    err = await failure(
        service.stub.CreateTemplate(
            notify_pb2.CreateTemplateRequest(
                template=notify_pb2.Template(
                    name="T",
                    contents=[
                        notify_pb2.TemplateContent(locale="en", subject="Hi", text="a\nb\n{{ }}")
                    ],
                )
            ),
            metadata=tenant.md(),
        )
    )
    [(field, message)] = violations_of(err)
    assert field == "template.contents[0].text"
    assert message.startswith("line 3:")


async def test_the_sandbox_keeps_templates_away_from_internals(
    service: Running, tenant: Tenant
) -> None:
    template = await _template(
        service,
        tenant,
        notify_pb2.Template(
            name="Evil",
            contents=[
                notify_pb2.TemplateContent(
                    locale="en",
                    subject="x",
                    text="{{ ''.__class__.__mro__[1].__subclasses__() }}",
                )
            ],
        ),
    )
    err = await failure(
        service.stub.PreviewTemplate(
            notify_pb2.PreviewTemplateRequest(id=template.id), metadata=tenant.md()
        )
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations_of(err)] == ["variables"]
    looped = await _template(
        service,
        tenant,
        notify_pb2.Template(
            name="Loop",
            contents=[
                notify_pb2.TemplateContent(
                    locale="en", subject="x", text="{% for i in range(10**9) %}{% endfor %}"
                )
            ],
        ),
    )
    err = await failure(
        service.stub.PreviewTemplate(
            notify_pb2.PreviewTemplateRequest(id=looped.id), metadata=tenant.md()
        )
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_bad_sends_and_other_tenants(
    service: Running, tenant: Tenant, other_tenant: Tenant
) -> None:
    template = await _template(service, tenant)
    stub = service.stub
    assert await _invalid(_send(service, tenant, template_id=template.id)) == ["contact_id"]
    assert await _invalid(
        _send(service, tenant, template_id=template.id, to="a@example.com", contact_id=new_id())
    ) == ["contact_id"]
    assert await _invalid(_send(service, tenant, template_id=template.id, to="not an address")) == [
        "to"
    ]
    assert await _invalid(
        stub.ListEmails(
            notify_pb2.ListEmailsRequest(status=notify_pb2.EmailStatus.ValueType(77)),
            metadata=tenant.md(),
        )
    ) == ["status"]
    sent = await _send(service, tenant, template_id=template.id, to="x@example.com")
    for call in (
        stub.GetTemplate(notify_pb2.GetTemplateRequest(id=template.id), metadata=other_tenant.md()),
        stub.UpdateTemplate(
            notify_pb2.UpdateTemplateRequest(
                id=template.id, template=notify_pb2.Template(name="X")
            ),
            metadata=other_tenant.md(),
        ),
        stub.DeleteTemplate(
            notify_pb2.DeleteTemplateRequest(id=template.id), metadata=other_tenant.md()
        ),
        stub.PreviewTemplate(
            notify_pb2.PreviewTemplateRequest(id=template.id), metadata=other_tenant.md()
        ),
        _send(service, other_tenant, template_id=template.id, to="x@example.com"),
        stub.GetEmail(notify_pb2.GetEmailRequest(id=sent.id), metadata=other_tenant.md()),
        _send(service, tenant, template_id=template.id, contact_id=new_id()),  # unknown contact
    ):
        err = await failure(call)
        assert err.code() is grpc.StatusCode.NOT_FOUND, err.details()
    listed = await stub.ListEmails(notify_pb2.ListEmailsRequest(), metadata=other_tenant.md())
    assert list(listed.emails) == []
    mine = await stub.ListEmails(notify_pb2.ListEmailsRequest(origin="api"), metadata=tenant.md())
    assert [e.id for e in mine.emails] == [sent.id]


async def test_templates_update_with_etags_and_page(service: Running, tenant: Tenant) -> None:
    template = await _template(service, tenant)
    renamed = await service.stub.UpdateTemplate(
        notify_pb2.UpdateTemplateRequest(
            id=template.id, template=notify_pb2.Template(name="Hello"), etag=template.etag
        ),
        metadata=tenant.md(),
    )
    assert (renamed.name, renamed.version, len(renamed.contents)) == ("Hello", 2, 2)
    err = await failure(
        service.stub.UpdateTemplate(
            notify_pb2.UpdateTemplateRequest(
                id=template.id, template=notify_pb2.Template(name="X"), etag=template.etag
            ),
            metadata=tenant.md(),
        )
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert await _invalid(
        service.stub.UpdateTemplate(
            notify_pb2.UpdateTemplateRequest(
                id=template.id,
                template=notify_pb2.Template(default_locale="fr"),
                update_mask=["default_locale"],
            ),
            metadata=tenant.md(),
        )
    ) == ["template.default_locale"]
    await service.stub.DeleteTemplate(
        notify_pb2.DeleteTemplateRequest(id=template.id), metadata=tenant.md()
    )
    listed = await service.stub.ListTemplates(
        notify_pb2.ListTemplatesRequest(), metadata=tenant.md()
    )
    assert list(listed.templates) == []


async def test_a_mail_server_that_is_down_is_retried(
    service: Running, tenant: Tenant, mailbox: Mailbox
) -> None:
    template = await _template(service, tenant)
    address = f"dee.{new_id()[-8:]}@example.com"
    await mailbox.stop()
    try:
        queued = await _send(service, tenant, template_id=template.id, to=address)
        retried = await eventually(
            lambda: _attempted(service, tenant, queued.id), what="a failed attempt"
        )
        assert retried.status == notify_pb2.EMAIL_STATUS_QUEUED
        assert retried.error
    finally:
        await mailbox.start()
    await eventually(
        lambda: _status(service, tenant, queued.id, notify_pb2.EMAIL_STATUS_SENT), what="sent"
    )
    assert len(mailbox.to(address)) == 1


async def _attempted(service: Running, tenant: Tenant, email_id: str) -> notify_pb2.Email | None:
    got = await service.stub.GetEmail(notify_pb2.GetEmailRequest(id=email_id), metadata=tenant.md())
    return got if got.attempt_count >= 1 else None
