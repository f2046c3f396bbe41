"""Idempotency keys recorded by the service with the write (crmkit.idempotency), as a partner
calling the service directly sees them: a repeat answers the first result and writes nothing."""

from __future__ import annotations

import asyncio

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from crm.contacts.v1 import contacts_pb2
from crmkit import idempotency
from trellis_devstack.testing import failure

from .support import Running, Tenant


def create(**fields: object) -> contacts_pb2.CreateContactRequest:
    return contacts_pb2.CreateContactRequest(contact=contacts_pb2.Contact(**fields))  # type: ignore[arg-type]


def with_key(tenant: Tenant, key: str, principal: str = "key-1") -> tuple[tuple[str, str], ...]:
    return (*tenant.md(principal=principal), (idempotency.METADATA_KEY, key))


async def test_a_repeat_returns_the_first_result_and_writes_nothing(
    service: Running, tenant: Tenant
) -> None:
    request = create(first_name="Ada", emails=["ada@example.com"])
    first = await service.stub.CreateContact(request, metadata=with_key(tenant, "k-1"))
    again = await service.stub.CreateContact(request, metadata=with_key(tenant, "k-1"))
    assert again == first  # same id, version, etag and times: the stored answer
    assert await service.count("contacts", tenant.id) == 1
    assert await service.outbox_types(tenant.id) == ["crm.contacts.contact.created.v1"]


async def test_concurrent_repeats_make_one_record(service: Running, tenant: Tenant) -> None:
    request = create(first_name="Grace", emails=["grace@example.com"])
    answers = await asyncio.gather(
        *(service.stub.CreateContact(request, metadata=with_key(tenant, "k-2")) for _ in range(8))
    )
    assert len({a.id for a in answers}) == 1
    assert await service.count("contacts", tenant.id) == 1


async def test_the_same_key_with_another_request_is_refused(
    service: Running, tenant: Tenant
) -> None:
    await service.stub.CreateContact(create(first_name="Ada"), metadata=with_key(tenant, "k-3"))
    err = await failure(
        service.stub.CreateContact(create(first_name="Eve"), metadata=with_key(tenant, "k-3"))
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    failure_detail = error_details_pb2.PreconditionFailure()
    assert status.details[-1].Unpack(failure_detail)
    assert [v.type for v in failure_detail.violations] == [idempotency.KEY_REUSED]
    # Another method under the same key is another request too.
    err = await failure(
        service.stub.CreateCompany(
            contacts_pb2.CreateCompanyRequest(company=contacts_pb2.Company(name="Acme")),
            metadata=with_key(tenant, "k-3"),
        )
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert await service.count("contacts", tenant.id) == 1
    assert await service.count("companies", tenant.id) == 0


async def test_a_failed_call_leaves_the_key_free(service: Running, tenant: Tenant) -> None:
    err = await failure(
        service.stub.CreateContact(
            create(emails=["not an email"]), metadata=with_key(tenant, "k-4")
        )
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    fixed = await service.stub.CreateContact(
        create(emails=["fixed@example.com"]), metadata=with_key(tenant, "k-4")
    )
    assert list(fixed.emails) == ["fixed@example.com"]


async def test_keys_belong_to_their_caller_and_tenant(
    service: Running, tenant: Tenant, other_tenant: Tenant
) -> None:
    request = create(first_name="Ada")
    a = await service.stub.CreateContact(request, metadata=with_key(tenant, "shared"))
    b = await service.stub.CreateContact(
        request, metadata=with_key(tenant, "shared", principal="key-2")
    )
    c = await service.stub.CreateContact(request, metadata=with_key(other_tenant, "shared"))
    assert len({a.id, b.id, c.id}) == 3
    assert await service.count("contacts", tenant.id) == 2


async def test_a_key_longer_than_the_bound_is_refused(service: Running, tenant: Tenant) -> None:
    err = await failure(
        service.stub.CreateContact(create(first_name="Ada"), metadata=with_key(tenant, "x" * 256))
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert await service.count("contacts", tenant.id) == 0
