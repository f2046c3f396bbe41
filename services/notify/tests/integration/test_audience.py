"""Notify's copy of contacts and their consents follows contacts' events whatever their order;
the suppression list is the tenant's, by hand too."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
from psycopg.rows import dict_row

from crm.notify.v1 import notify_pb2
from crmkit.errors import violations_of
from crmkit.ids import new_id
from trellis_devstack.testing import eventually, failure
from trellis_notify import audience

from .support import Running, Tenant, publish


def contact_data(contact_id: str, version: int, email: str, **fields: Any) -> dict[str, Any]:
    return {
        "contact": {
            "id": contact_id,
            "version": str(version),
            "emails": [email] if email else [],
            **fields,
        }
    }


def consent_data(consent_id: str, contact_id: str, purpose: str, status: str) -> dict[str, Any]:
    return {
        "consent": {
            "id": consent_id,
            "contact_id": contact_id,
            "purpose": purpose,
            "status": f"CONSENT_STATUS_{status.upper()}",
        }
    }


async def publish_contact(
    service: Running,
    tenant: Tenant,
    contact_id: str,
    version: int,
    email: str,
    action: str = "updated",
    **fields: Any,
) -> str:
    return await publish(
        service.js,
        tenant.id,
        record_id=contact_id,
        version=version,
        action=action,
        data=contact_data(contact_id, version, email, **fields),
    )


async def publish_consent(
    service: Running,
    tenant: Tenant,
    consent_id: str,
    contact_id: str,
    version: int,
    purpose: str,
    status: str,
) -> str:
    return await publish(
        service.js,
        tenant.id,
        record_id=consent_id,
        version=version,
        entity="consent",
        action="changed",
        data=consent_data(consent_id, contact_id, purpose, status),
    )


async def refusal(
    service: Running, tenant: Tenant, email: str, contact_id: str, purpose: str
) -> str | None:
    async with await psycopg.AsyncConnection.connect(
        service.admin_url, row_factory=dict_row
    ) as conn:
        return await audience.refusal(conn, tenant.id, email, contact_id, purpose)


async def _row(service: Running, tenant: Tenant, contact_id: str) -> tuple[Any, ...] | None:
    rows = await service.query(
        "SELECT email, first_name FROM contacts WHERE tenant_id = %s AND id = %s",
        tenant.id,
        contact_id,
    )
    return rows[0] if rows else None


async def test_the_projection_ends_as_contacts_left_the_record(
    service: Running, tenant: Tenant
) -> None:
    ada = new_id()
    await publish_contact(service, tenant, ada, 2, "ada@new.example", first_name="Ada")
    await publish_contact(service, tenant, ada, 1, "ada@old.example", action="created")  # late
    await publish_contact(service, tenant, ada, 2, "ada@new.example", first_name="Ada")  # again
    marker = new_id()
    await publish_contact(service, tenant, marker, 1, "m@example.com", action="created")
    await eventually(lambda: _row(service, tenant, marker), what="the marker")
    assert await _row(service, tenant, ada) == ("ada@new.example", "Ada")

    consent = new_id()
    assert await refusal(service, tenant, "ada@new.example", ada, "marketing_email") == (
        "no consent to marketing_email"
    )
    assert await refusal(service, tenant, "ada@new.example", ada, "transactional_email") is None
    await publish_consent(service, tenant, consent, ada, 1, "marketing_email", "granted")
    await eventually(lambda: _refused_is(service, tenant, ada, None), what="consent granted")
    await publish_consent(service, tenant, consent, ada, 2, "marketing_email", "withdrawn")
    await eventually(
        lambda: _refused_is(service, tenant, ada, "consent to marketing_email withdrawn"),
        what="consent withdrawn",
    )

    await publish(
        service.js,
        tenant.id,
        record_id=ada,
        version=3,
        action="deleted",
        data={"id": ada, "version": "3"},
    )
    await eventually(lambda: _gone(service, tenant, ada), what="the deletion")
    assert await service.query("SELECT 1 FROM consents WHERE tenant_id = %s", tenant.id) == []


async def _refused_is(service: Running, tenant: Tenant, contact_id: str, why: str | None) -> bool:
    return await refusal(service, tenant, "ada@new.example", contact_id, "marketing_email") == why


async def _gone(service: Running, tenant: Tenant, contact_id: str) -> bool:
    return await _row(service, tenant, contact_id) is None


async def test_suppressions_by_hand(service: Running, tenant: Tenant, other_tenant: Tenant) -> None:
    stub = service.stub
    added = await stub.CreateSuppression(
        notify_pb2.CreateSuppressionRequest(
            suppression=notify_pb2.Suppression(email=" Eve@Example.com ", detail="asked by phone")
        ),
        metadata=tenant.md(),
    )
    assert (added.email, added.purpose, added.reason) == (
        "eve@example.com",
        "",
        notify_pb2.SUPPRESSION_REASON_MANUAL,
    )
    await stub.CreateSuppression(
        notify_pb2.CreateSuppressionRequest(
            suppression=notify_pb2.Suppression(email="ann@example.com", purpose="marketing_email")
        ),
        metadata=tenant.md(),
    )
    assert (
        await refusal(service, tenant, "EVE@example.com", "", "transactional_email")
        == "suppressed (manual)"
    )
    assert await refusal(service, tenant, "ann@example.com", "", "transactional_email") is None
    assert (
        await refusal(service, tenant, "ann@example.com", "", "marketing_email")
        == "suppressed (manual)"
    )

    first = await stub.ListSuppressions(
        notify_pb2.ListSuppressionsRequest(page_size=1), metadata=tenant.md()
    )
    rest = await stub.ListSuppressions(
        notify_pb2.ListSuppressionsRequest(page_size=1, page_token=first.next_page_token),
        metadata=tenant.md(),
    )
    assert [s.email for s in [*first.suppressions, *rest.suppressions]] == [
        "ann@example.com",
        "eve@example.com",
    ]
    assert rest.next_page_token == ""
    others = await stub.ListSuppressions(
        notify_pb2.ListSuppressionsRequest(), metadata=other_tenant.md()
    )
    assert list(others.suppressions) == []
    err = await failure(
        stub.DeleteSuppression(
            notify_pb2.DeleteSuppressionRequest(email="eve@example.com"), metadata=other_tenant.md()
        )
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND

    await stub.DeleteSuppression(
        notify_pb2.DeleteSuppressionRequest(email="Eve@example.com"), metadata=tenant.md()
    )
    assert await refusal(service, tenant, "eve@example.com", "", "transactional_email") is None

    for bad, field in (
        (notify_pb2.Suppression(email="not an address"), "suppression.email"),
        (notify_pb2.Suppression(email="a@example.com", purpose="Marketing"), "suppression.purpose"),
        (notify_pb2.Suppression(email="a@example.com", detail="x\ny"), "suppression.detail"),
    ):
        err = await failure(
            stub.CreateSuppression(
                notify_pb2.CreateSuppressionRequest(suppression=bad), metadata=tenant.md()
            )
        )
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in violations_of(err)] == [field]
