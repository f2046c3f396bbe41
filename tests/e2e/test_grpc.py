"""The same API over gRPC: through the gateway with an API key, and the services' own guard."""

from __future__ import annotations

import re
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit import auth
from crmkit.context import Identity
from tests.helpers import Platform, Tenant
from trellis_devstack.probes import health_status


def _gateway(platform: Platform) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(platform.stack.grpc_address("gateway"))


def _contacts(platform: Platform) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(platform.stack.grpc_address("contacts"))


async def test_crud_and_paging_through_the_gateway(platform: Platform, tenant: Tenant) -> None:
    md = (("authorization", f"Bearer {tenant.key}"),)
    tag = f"g-{uuid.uuid4().hex[:8]}"
    async with _gateway(platform) as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        made = await stub.CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(first_name="Grpc", tags=[tag])
            ),
            metadata=md,
        )
        assert made.version == 1
        got = await stub.GetContact(contacts_pb2.GetContactRequest(id=made.id), metadata=md)
        assert got.first_name == "Grpc"

        with pytest.raises(grpc.aio.AioRpcError) as stale:
            await stub.UpdateContact(
                contacts_pb2.UpdateContactRequest(
                    id=made.id,
                    contact=contacts_pb2.Contact(first_name="X"),
                    update_mask=["first_name"],
                    etag="stale",
                ),
                metadata=md,
            )
        assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        updated = await stub.UpdateContact(
            contacts_pb2.UpdateContactRequest(
                id=made.id,
                contact=contacts_pb2.Contact(first_name="Renamed"),
                update_mask=["first_name"],
                etag=got.etag,
            ),
            metadata=md,
        )
        assert (updated.first_name, updated.version) == ("Renamed", 2)

        for i in range(4):
            await stub.CreateContact(
                contacts_pb2.CreateContactRequest(
                    contact=contacts_pb2.Contact(first_name=f"N{i}", tags=[tag])
                ),
                metadata=md,
            )
        seen, token, pages = [], "", 0
        while True:
            page = await stub.ListContacts(
                contacts_pb2.ListContactsRequest(page_size=2, page_token=token, tag=tag),
                metadata=md,
            )
            pages += 1
            seen += [c.id for c in page.contacts]
            token = page.next_page_token
            if not token:
                break
        assert pages == 3
        assert len(seen) == len(set(seen)) == 5

        await stub.DeleteContact(contacts_pb2.DeleteContactRequest(id=made.id), metadata=md)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.GetContact(contacts_pb2.GetContactRequest(id=made.id), metadata=md)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_gateway_grpc_rejects_bad_keys_and_input(platform: Platform, tenant: Tenant) -> None:
    async with _gateway(platform) as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as anon:
            await stub.ListContacts(contacts_pb2.ListContactsRequest())
        assert anon.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.CreateContact(
                contacts_pb2.CreateContactRequest(
                    contact=contacts_pb2.Contact(first_name="x" * 201)
                ),
                metadata=(("authorization", f"Bearer {tenant.key}"),),
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_services_refuse_calls_without_a_valid_internal_token(
    platform: Platform, tenant: Tenant
) -> None:
    ident = Identity(tenant.id, "intruder", frozenset({"admin"}))
    forged = auth.mint(ident, auth.SigningKey.generate("gateway-1"))  # the kid, not the key
    async with _contacts(platform) as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        for metadata in [(), (("trellis-identity", "garbage"),), (("trellis-identity", forged),)]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListContacts(contacts_pb2.ListContactsRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A bare tenant header is not an identity either.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListContacts(
                contacts_pb2.ListContactsRequest(), metadata=(("x-tenant-id", tenant.id),)
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health needs no token and reports SERVING.
        assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_the_gateway_answers_with_its_own_request_id_for_an_unusable_one(
    platform: Platform, tenant: Tenant
) -> None:
    async with _gateway(platform) as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        for given, kept in [
            ("order-42:retry.1", True),
            ("a" * 6000, False),
            ('spaces; and quotes"', False),
        ]:
            call = stub.ListContacts(
                contacts_pb2.ListContactsRequest(page_size=1),
                metadata=(("authorization", f"Bearer {tenant.key}"), ("x-request-id", given)),
            )
            await call
            answered = dict(await call.initial_metadata())["x-request-id"]
            assert (answered == given) is kept
            assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", str(answered))


async def test_the_bootstrap_key_cannot_act_in_a_tenant_over_grpc(platform: Platform) -> None:
    md = (("authorization", f"Bearer {platform.stack.bootstrap_key}"),)
    async with _gateway(platform) as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.CreateContact(
                contacts_pb2.CreateContactRequest(contact=contacts_pb2.Contact(first_name="Z")),
                metadata=md,
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
