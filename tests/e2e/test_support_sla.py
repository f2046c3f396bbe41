"""SLA breaches end to end, on the real clock: a policy with targets of seconds, tickets
through the gateway, sla_breached events on NATS. One event per ticket and target when the
target passes, also with the support process restarted in between and with a second replica
running; none for a ticket solved in time. Each test waits for a later breach of its own (the
marker) before it counts, never for a silence."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import httpx
import nats
import psycopg
from grpc_health.v1 import health_pb2
from nats.js import JetStreamContext

from tests.helpers import Platform, Tenant
from trellis_devstack.infra import free_port
from trellis_devstack.probes import wait_for_health

Fired = Counter[tuple[str, str]]  # (ticket id, target) -> breach events


@asynccontextmanager
async def _breaches(
    platform: Platform, tenant: Tenant
) -> AsyncIterator[JetStreamContext.PushSubscription]:
    nc = await nats.connect(platform.stack.nats_url)
    try:
        yield await nc.jetstream().subscribe(
            f"crm.events.{tenant.id}.support.ticket.sla_breached", ordered_consumer=True
        )
    finally:
        await nc.close()


async def _until(
    sub: JetStreamContext.PushSubscription, fired: Fired, wanted: set[tuple[str, str]]
) -> Fired:
    """Count breach events until every (ticket, target) of `wanted` has come at least once."""
    while not wanted <= set(fired):
        msg = await sub.next_msg(timeout=60)
        data = json.loads(msg.data)
        fired[(data["ticket"]["id"], data["target"]["target"])] += 1
    return fired


async def _outbox_breaches(platform: Platform, tenant: Tenant) -> int:
    """Breach events the support database ever wrote for the tenant (the owner sees them all)."""
    owner_url = platform.stack.urls["support"][0]
    async with await psycopg.AsyncConnection.connect(owner_url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM outbox WHERE tenant_id = %s AND ce_type = %s",
            (tenant.id, "crm.support.ticket.sla_breached.v1"),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _setup(api: httpx.AsyncClient, first_response: int, resolution: int) -> str:
    policy = await api.post(
        "/v1/sla-policies",
        json={
            "name": "Seconds",
            "targets": {"first_response": f"{first_response}s", "resolution": f"{resolution}s"},
        },
    )
    assert policy.status_code == 201, policy.text
    contact = await api.post("/v1/contacts", json={"first_name": "Ada"})
    return str(contact.json()["id"])


async def _ticket(api: httpx.AsyncClient, contact_id: str) -> str:
    made = await api.post("/v1/tickets", json={"subject": "Down", "contact_id": contact_id})
    assert made.status_code == 201, made.text
    assert made.json()["sla"]["policy_name"] == "Seconds"
    return str(made.json()["id"])


FIRST, RESOLUTION = "SLA_TARGET_FIRST_RESPONSE", "SLA_TARGET_RESOLUTION"


async def test_one_breach_per_target_and_none_for_a_ticket_solved_in_time(
    platform: Platform, tenant: Tenant
) -> None:
    async with _breaches(platform, tenant) as sub, tenant.client() as api:
        contact_id = await _setup(api, first_response=2, resolution=5)
        late = await _ticket(api, contact_id)
        in_time = await _ticket(api, contact_id)
        assert (
            await api.post(f"/v1/tickets/{in_time}/comments", json={"body": "Fixed"})
        ).status_code == 201
        solved = await api.post(
            f"/v1/tickets/{in_time}:changeStatus", json={"status": "TICKET_STATUS_SOLVED"}
        )
        assert solved.status_code == 200
        fired = await _until(sub, Counter(), {(late, FIRST), (late, RESOLUTION)})
        got = await api.get(f"/v1/tickets/{late}")
    # The resolution breach came last: the first response's would have come before it.
    assert fired == {(late, FIRST): 1, (late, RESOLUTION): 1}
    assert [t["state"] for t in got.json()["sla"]["targets"]] == ["SLA_TARGET_STATE_BREACHED"] * 2


async def test_a_breach_due_while_support_is_down_fires_once_after_the_restart(
    platform: Platform, tenant: Tenant
) -> None:
    async with _breaches(platform, tenant) as sub, tenant.client() as api:
        contact_id = await _setup(api, first_response=4, resolution=8)
        ticket = await _ticket(api, contact_id)
        platform.stop("support")
        platform.start("support")
        async with grpc.aio.insecure_channel(platform.stack.grpc_address("support")) as channel:
            await wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING, seconds=30)
        fired = await _until(sub, Counter(), {(ticket, FIRST), (ticket, RESOLUTION)})
    assert fired == {(ticket, FIRST): 1, (ticket, RESOLUTION): 1}
    assert await _outbox_breaches(platform, tenant) == 2


@contextmanager
def _second_replica(platform: Platform, logs: Path) -> Iterator[str]:
    """Another support process on the same database and bus, on ports of its own."""
    port = free_port()
    env = {
        **platform.stack.env("support"),
        "SUPPORT_GRPC_PORT": str(port),
        "SUPPORT_METRICS_PORT": str(free_port()),
    }
    with (logs / "support-2.log").open("ab") as log:
        proc = subprocess.Popen(
            platform.stack.command("support", "serve"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_two_replicas_fire_each_breach_once(
    platform: Platform, tenant: Tenant, tmp_path: Path
) -> None:
    with _second_replica(platform, tmp_path) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            await wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING, seconds=30)
        async with _breaches(platform, tenant) as sub, tenant.client() as api:
            contact_id = await _setup(api, first_response=3, resolution=6)
            tickets = await asyncio.gather(*(_ticket(api, contact_id) for _ in range(8)))
            wanted = {(t, target) for t in tickets for target in (FIRST, RESOLUTION)}
            fired = await _until(sub, Counter(), wanted)
    assert fired == dict.fromkeys(wanted, 1)
    assert await _outbox_breaches(platform, tenant) == len(wanted)
    assert len({uuid.UUID(t) for t in tickets}) == 8
