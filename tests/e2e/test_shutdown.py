"""SIGTERM under load: accepted calls finish, later ones are refused cleanly, the process exits."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter

import grpc
from grpc_health.v1 import health_pb2

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit.context import Identity
from tests.helpers import Platform, Tenant
from trellis_devstack.infra import free_port
from trellis_devstack.probes import wait_for_health

GRACE_SECONDS = 10  # CONTACTS_SHUTDOWN_GRACE_SECONDS in the stack's environment


async def test_sigterm_during_load(platform: Platform, tenant: Tenant) -> None:
    port = free_port()
    env = {
        **platform.stack.env("contacts"),
        "CONTACTS_GRPC_PORT": str(port),
        "CONTACTS_METRICS_PORT": "0",
    }
    proc = await asyncio.create_subprocess_exec(
        *platform.stack.command("contacts", "serve"), env=env
    )
    address = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(address) as probe:
            await wait_for_health(probe, health_pb2.HealthCheckResponse.SERVING, seconds=30)
        token = platform.stack.mint(
            Identity(tenant.id, "load", frozenset({"contacts:write", "contacts:read"}))
        )
        md = (("trellis-identity", token),)
        tag = f"load-{uuid.uuid4().hex[:8]}"
        outcomes: Counter[str] = Counter()
        signalled = asyncio.Event()

        async with grpc.aio.insecure_channel(address) as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)

            async def worker() -> None:
                for _ in range(25):
                    request = contacts_pb2.CreateContactRequest(
                        contact=contacts_pb2.Contact(first_name="Load", tags=[tag])
                    )
                    try:
                        await stub.CreateContact(request, metadata=md, timeout=30)
                        outcomes["OK"] += 1
                    except grpc.aio.AioRpcError as err:
                        outcomes[err.code().name] += 1
                        if err.code() == grpc.StatusCode.UNAVAILABLE and signalled.is_set():
                            return

            workers = [asyncio.create_task(worker()) for _ in range(16)]
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            signalled.set()
            await asyncio.gather(*workers)

        exit_code = await asyncio.wait_for(proc.wait(), GRACE_SECONDS + 5)
        assert exit_code == 0
        assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
        assert outcomes["OK"] > 0

        # Every call answered OK was committed, and nothing refused was written.
        async with tenant.client() as api:
            listed = await api.get("/v1/contacts", params={"tag": tag, "page_size": "500"})
        assert len(listed.json()["contacts"]) == outcomes["OK"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
