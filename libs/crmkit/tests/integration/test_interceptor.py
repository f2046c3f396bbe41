"""The chassis interceptor over a real gRPC server: the per-RPC rules every service gets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crm.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from crmkit import auth, grpc_server, idempotency
from crmkit.context import Identity, caller
from trellis_devstack.infra import free_port

KEY = auth.SigningKey.generate("gateway-test")
TENANT = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
Ctx = grpc.aio.ServicerContext[Any, Any]


class Probe:
    """Handlers that show what the interceptor hands them and how it treats their failures."""

    def __init__(self) -> None:
        self.deadlocks_left = 0
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def GetContact(self, request: Any, context: Ctx) -> contacts_pb2.Contact:
        who = caller()
        return contacts_pb2.Contact(id=who.tenant_id, owner_id=who.principal)

    async def CreateCompany(self, request: Any, context: Ctx) -> contacts_pb2.Company:
        if self.deadlocks_left:
            self.deadlocks_left -= 1
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return contacts_pb2.Company(name=request.company.name)

    async def DeleteCompany(self, request: Any, context: Ctx) -> Any:
        self.entered.set()
        await self.release.wait()
        return empty_pb2.Empty()


@dataclass
class Hosted:
    channel: grpc.aio.Channel
    stub: contacts_pb2_grpc.ContactsServiceAsyncStub
    probe: Probe
    chassis: grpc_server.ChassisInterceptor


@pytest.fixture
async def hosted() -> AsyncIterator[Hosted]:
    server, chassis = grpc_server.build_server(
        grpc_server.internal_token_authenticator(
            auth.Verifier(auth.load_jwks(auth.jwks(KEY.public_jwk())))
        ),
        None,
    )
    probe = Probe()
    served: dict[str, tuple[Any, type[Message]]] = {
        "GetContact": (probe.GetContact, contacts_pb2.GetContactRequest),
        "CreateCompany": (probe.CreateCompany, contacts_pb2.CreateCompanyRequest),
        "DeleteCompany": (probe.DeleteCompany, contacts_pb2.DeleteCompanyRequest),
    }
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "crm.contacts.v1.ContactsService",
                {
                    name: grpc.unary_unary_rpc_method_handler(
                        handler,
                        request_deserializer=request.FromString,
                        response_serializer=lambda m: m.SerializeToString(),
                    )
                    for name, (handler, request) in served.items()
                },
            ),
            grpc.method_handlers_generic_handler(
                "crm.probe.v1.Undeclared",
                {"Do": grpc.unary_unary_rpc_method_handler(lambda r, c: b"")},
            ),
        ]
    )
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Hosted(channel, contacts_pb2_grpc.ContactsServiceStub(channel), probe, chassis)
    await channel.close()
    await server.stop(0)


def md(tenant: str = TENANT, scopes: tuple[str, ...] = ("admin",)) -> tuple[tuple[str, str]]:
    token = auth.mint(Identity(tenant, "key:probe", frozenset(scopes)), KEY)
    return ((auth.METADATA_KEY, token),)


async def test_handlers_get_the_caller_with_a_canonical_tenant(hosted: Hosted) -> None:
    got = await hosted.stub.GetContact(
        contacts_pb2.GetContactRequest(id="x"), metadata=md(TENANT.upper())
    )
    assert (got.id, got.owner_id) == (TENANT, "key:probe")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hosted.stub.GetContact(contacts_pb2.GetContactRequest(), metadata=md("not-a-uuid"))
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_scope_limits_and_bodies_are_checked_before_the_handler(hosted: Hosted) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hosted.stub.GetContact(
            contacts_pb2.GetContactRequest(), metadata=md(scopes=("contacts:write",))
        )
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hosted.stub.GetContact(contacts_pb2.GetContactRequest(id="x" * 65), metadata=md())
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "id" in (err.value.details() or "")

    raw = hosted.channel.unary_unary(
        "/crm.contacts.v1.ContactsService/GetContact",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(b"\xff\xff\xff\xff", metadata=md())
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid GetContactRequest" in (err.value.details() or "")


async def test_methods_outside_the_contract_are_refused(hosted: Hosted) -> None:
    undeclared = hosted.channel.unary_unary(
        "/crm.probe.v1.Undeclared/Do",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await undeclared(b"", metadata=md())
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_deadlock_victims_are_run_again_then_aborted(hosted: Hosted) -> None:
    request = contacts_pb2.CreateCompanyRequest(company=contacts_pb2.Company(name="Acme"))
    hosted.probe.deadlocks_left = 2
    assert (await hosted.stub.CreateCompany(request, metadata=md())).name == "Acme"
    hosted.probe.deadlocks_left = 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hosted.stub.CreateCompany(request, metadata=md())
    assert err.value.code() is grpc.StatusCode.ABORTED
    assert hosted.probe.deadlocks_left == 0


async def test_drain_ends_when_the_calls_in_flight_are_done_despite_steady_traffic(
    hosted: Hosted,
) -> None:
    in_flight = asyncio.ensure_future(
        hosted.stub.DeleteCompany(contacts_pb2.DeleteCompanyRequest(id="x"), metadata=md())
    )
    await asyncio.wait_for(hosted.probe.entered.wait(), 10)
    drain = asyncio.create_task(hosted.chassis.drain(grace=300))
    refused = 0

    async def traffic() -> None:
        # Callers that keep coming back until the drain is over: each is refused, retryably.
        nonlocal refused
        while not drain.done():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await hosted.stub.GetContact(contacts_pb2.GetContactRequest(), metadata=md())
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            refused += 1
            if refused == 20:
                hosted.probe.release.set()  # the call in flight may finish now

    await asyncio.wait_for(asyncio.gather(traffic(), drain), 60)
    await in_flight  # it was let finish: no error
    assert refused >= 20


async def test_an_answer_with_a_secret_is_never_stored_for_a_repeat(pool: Any, owner: Any) -> None:
    """Recorded keys keep answers to replay them, except answers holding a secret (a field
    marked debug_redact, such as a new API key's): a repeat is refused, never given it."""
    made: list[str] = []

    async def create_key(request: Any, context: Ctx) -> gateway_pb2.ApiKey:
        made.append(request.api_key.name)
        return gateway_pb2.ApiKey(id="k1", name=request.api_key.name, secret="shown-once")

    server, _ = grpc_server.build_server(
        grpc_server.internal_token_authenticator(
            auth.Verifier(auth.load_jwks(auth.jwks(KEY.public_jwk())))
        ),
        pool,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "crm.gateway.v1.ApiKeysService",
                {
                    "CreateApiKey": grpc.unary_unary_rpc_method_handler(
                        create_key,
                        request_deserializer=gateway_pb2.CreateApiKeyRequest.FromString,
                        response_serializer=lambda m: m.SerializeToString(),
                    )
                },
            )
        ]
    )
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gateway_pb2_grpc.ApiKeysServiceStub(channel)
            request = gateway_pb2.CreateApiKeyRequest(api_key=gateway_pb2.ApiKey(name="ci"))
            keyed = (*md(), (idempotency.METADATA_KEY, "key-1"))
            first = await stub.CreateApiKey(request, metadata=keyed)
            assert first.secret == "shown-once"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateApiKey(request, metadata=keyed)
            assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "shown only once" in (err.value.details() or "")
    finally:
        await server.stop(0)
    assert made == ["ci"]  # not run twice
    async with owner.connection() as conn:  # every tenant's records: the secret is in none
        cur = await conn.execute(
            "SELECT count(*) AS n, bool_and(withheld) AS withheld FROM idempotency_records"
            " WHERE position(%s in response) > 0 OR withheld",
            (b"shown-once",),
        )
        assert await cur.fetchone() == {"n": 1, "withheld": True}
        cur = await conn.execute(
            "SELECT count(*) AS n FROM idempotency_records WHERE position(%s in response) > 0",
            (b"shown-once",),
        )
        assert await cur.fetchone() == {"n": 0}
