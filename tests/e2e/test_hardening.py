"""One backend down: its routes answer 503 with Retry-After while the gateway stays ready and
says which backend is down; request ids a caller made up never reach the logs."""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from tests.helpers import Platform, Tenant
from trellis_devstack.probes import health_status
from trellis_devstack.testing import eventually

UNUSABLE_ID = "r" * 6000
CONTACTS_SERVICE = "crm.contacts.v1.ContactsService"
SERVING, NOT_SERVING = (
    health_pb2.HealthCheckResponse.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING,
)


async def _backend_status(anon: httpx.AsyncClient) -> tuple[int, str]:
    r = await anon.get("/readyz")
    return r.status_code, r.json()["backends"].get("contacts", "")


async def test_a_backend_down_takes_out_its_routes_not_the_gateway(
    platform: Platform, tenant: Tenant
) -> None:
    async with tenant.client() as api, httpx.AsyncClient(base_url=tenant.gateway_url) as anon:

        async def contacts_serving() -> bool:
            return await _backend_status(anon) == (200, "SERVING")

        await eventually(contacts_serving, "the gateway to see contacts serving")
        async with grpc.aio.insecure_channel(platform.stack.grpc_address("gateway")) as ch:
            assert await health_status(ch, CONTACTS_SERVICE) == SERVING
        platform.stop("contacts")
        try:

            async def contacts_down() -> bool:
                return await _backend_status(anon) == (200, "NOT_SERVING")

            await eventually(contacts_down, "the gateway to see contacts down, staying ready")
            async with grpc.aio.insecure_channel(platform.stack.grpc_address("gateway")) as ch:
                # Its gRPC health says so under contacts' name, and stays SERVING for itself.
                assert await health_status(ch, CONTACTS_SERVICE) == NOT_SERVING
                assert await health_status(ch, "") == SERVING
            r = await api.get("/v1/contacts", headers={"X-Request-Id": UNUSABLE_ID})
            assert r.status_code == 503
            assert r.json()["detail"] == "the service is unavailable; retry later"
            assert int(r.headers["retry-after"]) >= 1
            rest_id = r.headers["x-request-id"]
            assert rest_id != UNUSABLE_ID
            # The gateway's own API does not depend on contacts.
            assert (await api.get("/v1/api-keys")).status_code == 200

            async with grpc.aio.insecure_channel(platform.stack.grpc_address("gateway")) as ch:
                stub = contacts_pb2_grpc.ContactsServiceStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub.ListContacts(
                        contacts_pb2.ListContactsRequest(),
                        metadata=(
                            ("authorization", f"Bearer {tenant.key}"),
                            ("x-request-id", UNUSABLE_ID),
                        ),
                    )
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            grpc_id = str(dict(failed.value.initial_metadata())["x-request-id"])
            assert grpc_id != UNUSABLE_ID

            # Both failures are logged under the ids the caller was given; once those lines
            # are there, the made-up id would be too if it were logged at all.
            async def both_logged() -> bool:
                text = platform.log_text("gateway")
                return rest_id in text and grpc_id in text

            await eventually(both_logged, "the failed calls in the gateway's log")
            assert UNUSABLE_ID[:64] not in platform.log_text("gateway")
        finally:
            platform.start("contacts")

            async def contacts_back() -> bool:
                return (await api.get("/v1/contacts")).status_code == 200

            await eventually(contacts_back, "contacts to answer through the gateway again")
