"""`make bench`: the gateway beside its floors, in one run on this machine.

For contact create and get at a fixed concurrency, three paths are measured back to back:
- the floor: psycopg alone, doing the rows a create writes (contact and outbox, in one tenant
  transaction) and the select a get does;
- a direct gRPC call to the contacts service (with a minted identity token);
- the gateway's REST API, driven by `hey` (a Go load generator, so the client is not the
  bottleneck).
Figures are reported with their ratio to the floor, because shared machines are noisy: the
ratio is what to compare between runs. Results are printed and written to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import httpx

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit import auth, db
from crmkit.context import Identity
from crmkit.ids import new_id
from trellis_devstack.infra import Nats, Postgres
from trellis_devstack.processes import ServiceProcesses
from trellis_devstack.stack import Stack

RESULTS = Path(__file__).parent / "results"
UNLIMITED = {
    "GATEWAY_RATE_LIMIT_KEY_PER_SECOND": "1000000",
    "GATEWAY_RATE_LIMIT_KEY_BURST": "1000000",
    "GATEWAY_RATE_LIMIT_TENANT_PER_SECOND": "1000000",
    "GATEWAY_RATE_LIMIT_TENANT_BURST": "1000000",
    "GATEWAY_DB_POOL_MAX": "40",
    "CONTACTS_DB_POOL_MAX": "40",
    "LOG_LEVEL": "WARNING",
}


@dataclass
class Figure:
    name: str
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _drive(
    name: str, total: int, concurrency: int, op: Callable[[int], Awaitable[None]]
) -> Figure:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            started = time.perf_counter()
            try:
                await op(i)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Figure(
        name,
        total,
        errors,
        len(latencies) / elapsed,
        _percentile(latencies, 0.50) * 1000,
        _percentile(latencies, 0.99) * 1000,
    )


_OUTBOX = (
    "INSERT INTO outbox (id, tenant_id, subject, ce_type, ce_subject, data)"
    " VALUES (%s, %s, %s, 'crm.contacts.contact.created.v1', %s, %s)"
)


async def floor(app_url: str, tenant: str, total: int, concurrency: int) -> tuple[Figure, Figure]:
    pool = await db.open_pool(app_url, name="bench", min_size=concurrency, max_size=concurrency)
    ids: list[str] = []
    subject = f"crm.events.{tenant}.contacts.contact.created"

    async def create(_: int) -> None:
        cid = new_id()
        async with db.tenant_tx(pool, tenant) as conn:
            await conn.execute(
                "INSERT INTO contacts (tenant_id, id, first_name) VALUES (%s, %s, %s) RETURNING *",
                (tenant, cid, "Bench"),
            )
            data = json.dumps({"contact": {"id": cid, "first_name": "Bench"}}).encode()
            await conn.execute(_OUTBOX, (new_id(), tenant, subject, cid, data))
        ids.append(cid)

    async def get(i: int) -> None:
        async with db.tenant_tx(pool, tenant) as conn:
            cur = await conn.execute(
                "SELECT * FROM contacts WHERE tenant_id = %s AND id = %s",
                (tenant, ids[i % len(ids)]),
            )
            assert await cur.fetchone() is not None

    try:
        return (
            await _drive("psycopg create (floor)", total, concurrency, create),
            await _drive("psycopg get (floor)", total, concurrency, get),
        )
    finally:
        await pool.close()


async def direct_grpc(
    address: str, token: str, total: int, concurrency: int
) -> tuple[Figure, Figure]:
    md = (("trellis-identity", token),)
    ids: list[str] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)

        async def create(_: int) -> None:
            made = await stub.CreateContact(
                contacts_pb2.CreateContactRequest(contact=contacts_pb2.Contact(first_name="Bench")),
                metadata=md,
            )
            ids.append(made.id)

        async def get(i: int) -> None:
            await stub.GetContact(contacts_pb2.GetContactRequest(id=ids[i % len(ids)]), metadata=md)

        return (
            await _drive("gRPC create (direct)", total, concurrency, create),
            await _drive("gRPC get (direct)", total, concurrency, get),
        )


def _hey(name: str, args: list[str]) -> Figure:
    hey = shutil.which("hey")
    if hey is None:
        raise SystemExit("hey is missing: `make bench` installs it (Debian package hey)")
    out = subprocess.run([hey, *args], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        return float(re.search(rf"{p}% in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]

    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    total = sum(int(v) for v in codes.values())
    ok = sum(int(v) for k, v in codes.items() if k.startswith("2"))
    return Figure(name, total, total - ok, rps, pct("50"), pct("99"))


def gateway(url: str, key: str, total: int, concurrency: int) -> tuple[Figure, Figure]:
    auth_header = f"Authorization: Bearer {key}"
    common = ["-n", str(total), "-c", str(concurrency), "-H", auth_header]
    create = _hey(
        "gateway create (REST)",
        [
            *common,
            "-m",
            "POST",
            "-T",
            "application/json",
            "-d",
            '{"first_name":"Bench"}',
            f"{url}/v1/contacts",
        ],
    )
    one = httpx.post(
        f"{url}/v1/contacts",
        json={"first_name": "Target"},
        headers={"Authorization": f"Bearer {key}"},
    ).json()["id"]
    get = _hey("gateway get (REST)", [*common, f"{url}/v1/contacts/{one}"])
    return create, get


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trellis-bench-") as tmp:
        postgres = Postgres(
            Path(f"/tmp/trellis-pg-bench-{uuid.uuid4().hex[:6]}"),  # noqa: S108
            keep_data=False,
        )
        nats = Nats(Path(tmp) / "nats")
        nats.start()
        stack = Stack.ephemeral(postgres, nats.url)
        procs = ServiceProcesses(stack, Path(tmp))
        for name in stack.services:
            procs.start(name, UNLIMITED)
        try:
            stack.wait_ready()
            tenant, key = stack.create_tenant("bench", ["contacts:read", "contacts:write"])
            token = auth.mint(
                Identity(tenant, "bench", frozenset({"contacts:read", "contacts:write"})),
                stack.internal_token_secret,
                ttl_seconds=3600,
            )
            n, c = args.requests, args.concurrency
            figures = [
                *asyncio.run(floor(stack.urls["contacts"][1], tenant, n, c)),
                *asyncio.run(direct_grpc(stack.grpc_address("contacts"), token, n, c)),
                *gateway(stack.gateway_url, key, n, c),
            ]
        finally:
            for name in list(procs.procs):
                procs.stop(name)
            nats.stop()
            postgres.stop()

    floors = {"create": figures[0], "get": figures[1]}
    print(f"\n{n} requests each, concurrency {c}\n")
    print(f"{'path':<26}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'vs floor':>10}")
    for f in figures:
        base = floors["create" if "create" in f.name else "get"]
        print(
            f"{f.name:<26}{f.rps:>10.0f}{f.p50_ms:>10.2f}{f.p99_ms:>10.2f}{f.errors:>8}"
            f"{f.rps / base.rps:>10.2f}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {"requests": n, "concurrency": c, "figures": [asdict(f) for f in figures]}, indent=2
        )
    )
    print(f"\nwritten to {out}")
    if any(f.errors for f in figures):
        sys.exit(1)


main()
