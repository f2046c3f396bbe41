"""Contacts called by another service through crmkit.client, as sales and support call it:
on behalf of their caller, idempotently, and UNAVAILABLE (naming contacts) when it is down."""

from __future__ import annotations

import grpc
import pytest

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit import context
from crmkit.client import Callee
from crmkit.errors import ServiceError
from trellis_devstack.infra import free_port

from .support import Running, Tenant, token


def _serving_a_call(tenant: Tenant, principal: str = "key:sales-caller") -> None:
    """As the chassis sets it up for a handler of the calling service."""
    context.identity_token.set(token(tenant.id, ("contacts:read", "contacts:write"), principal))
    context.request_id.set("req-42")


async def test_a_service_calls_on_behalf_of_its_caller_idempotently(
    service: Running, tenant: Tenant
) -> None:
    _serving_a_call(tenant)
    contacts = Callee("contacts", service.address, timeout=10)
    try:
        stub = contacts_pb2_grpc.ContactsServiceStub(contacts.channel)
        request = contacts_pb2.CreateContactRequest(contact=contacts_pb2.Contact(first_name="Ada"))
        first = await contacts.call(stub.CreateContact, request, idempotency_key="lead-convert:1")
        again = await contacts.call(stub.CreateContact, request, idempotency_key="lead-convert:1")
        assert again.id == first.id  # a retried conversion finds the first contact
        got = await contacts.call(stub.GetContact, contacts_pb2.GetContactRequest(id=first.id))
        assert got.first_name == "Ada"
        with pytest.raises(ServiceError) as err:
            await contacts.call(stub.GetContact, contacts_pb2.GetContactRequest(id="nope"))
        assert err.value.code is grpc.StatusCode.NOT_FOUND
    finally:
        await contacts.close()
    assert await service.count("contacts", tenant.id) == 1


async def test_an_unreachable_callee_is_unavailable_by_name(tenant: Tenant) -> None:
    _serving_a_call(tenant)
    contacts = Callee("contacts", f"127.0.0.1:{free_port()}", timeout=2)
    try:
        stub = contacts_pb2_grpc.ContactsServiceStub(contacts.channel)
        with pytest.raises(ServiceError) as err:
            await contacts.call(stub.GetContact, contacts_pb2.GetContactRequest(id="x"))
    finally:
        await contacts.close()
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    assert "contacts service is unavailable" in err.value.message
