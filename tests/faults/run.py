"""The fault run: a platform of its own, writes through the gateway from concurrent callers
while its pieces are killed one at a time, and the figures that say what held.

Each fault strikes with requests in flight, keeps its piece down for a moment, starts it again
and measures how soon a write is acknowledged through the gateway and its event read from the
stream. Faults are spaced by progress (acknowledged writes), not by time, so the short and the
long run go through the same sequence. After the last fault every acknowledged key is sent once
more, one last write of each kind marks the end, and once the event reader has read that and
has nothing pending the database, the stream and the callers' record are compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from tests.faults.client import Client, Pacer, Write
from tests.faults.events import EventReader
from tests.faults.kinds import KINDS, Figures, WriteKind
from trellis_devstack.declaration import GATEWAY
from trellis_devstack.infra import Nats, Postgres
from trellis_devstack.processes import ServiceProcesses
from trellis_devstack.stack import Stack

NATS_SERVER, POSTGRES = "nats-server", "postgres"
# How long a killed piece stays down: long enough for the callers to find it gone.
DOWN_SECONDS = 1.0
# Whatever the run waits for (a recovery, an event, progress) is a failure after this long.
PATIENCE_SECONDS = 120.0
# Rate limits are not under test here: high enough that they never answer.
UNLIMITED = {
    "GATEWAY_RATE_LIMIT_KEY_PER_SECOND": "100000",
    "GATEWAY_RATE_LIMIT_KEY_BURST": "100000",
    "GATEWAY_RATE_LIMIT_TENANT_PER_SECOND": "100000",
    "GATEWAY_RATE_LIMIT_TENANT_BURST": "100000",
}


@dataclass(frozen=True)
class Fault:
    piece: str  # NATS_SERVER, POSTGRES or a service
    graceful: bool = False  # SIGTERM instead of SIGKILL

    @property
    def name(self) -> str:
        return f"{self.piece} {'SIGTERM' if self.graceful else 'SIGKILL'}"


def schedule(services: Sequence[str]) -> list[Fault]:
    """The issue's sequence, with every service the writes reach killed once: NATS, the first
    service, PostgreSQL (the postmaster), the gateway, the other services, NATS again, and the
    gateway stopped gracefully."""
    first, *others = services
    return [
        Fault(NATS_SERVER),
        Fault(first),
        Fault(POSTGRES),
        Fault(GATEWAY),
        *(Fault(s) for s in others),
        Fault(NATS_SERVER),
        Fault(GATEWAY, graceful=True),
    ]


@dataclass
class Platform:
    """The run's own PostgreSQL, NATS and services: it kills them, so no other test may
    share them."""

    postgres: Postgres
    nats: Nats
    stack: Stack
    processes: ServiceProcesses

    def kill(self, fault: Fault) -> None:
        if fault.piece == NATS_SERVER:
            self.nats.kill()
        elif fault.piece == POSTGRES:
            self.postgres.kill()
        elif fault.graceful:
            self.processes.stop(fault.piece)
        else:
            self.processes.kill(fault.piece)

    def start(self, fault: Fault) -> None:
        if fault.piece == NATS_SERVER:
            self.nats.start()
        elif fault.piece == POSTGRES:
            self.postgres.start()
        else:
            self.processes.start(fault.piece)

    def superuser_url(self, service: str) -> str:
        """The service's database as the superuser, whom row-level security does not bind."""
        return self.postgres.url(f"{self.stack.db_prefix}{service}")


@contextlib.contextmanager
def platform(logs: Path) -> Iterator[Platform]:
    """Start everything; stop whatever still runs on the way out, whatever happened."""
    with contextlib.ExitStack() as running:
        # Its own short path: the server's socket lives in it (sun_path is 107 bytes).
        postgres = Postgres(Path(f"/tmp/trellis-faults-{uuid.uuid4().hex[:8]}"), keep_data=False)  # noqa: S108
        running.callback(postgres.stop)
        nats = Nats(logs / "nats")
        nats.start()
        running.callback(nats.stop)
        stack = Stack.ephemeral(postgres, nats.url, extra_env=UNLIMITED)
        processes = ServiceProcesses(stack, logs)

        def stop_services() -> None:
            for name in reversed(list(processes.procs)):
                processes.stop(name)

        running.callback(stop_services)
        for name in stack.services:
            processes.start(name)
        stack.wait_ready()
        yield Platform(postgres, nats, stack, processes)


@dataclass(frozen=True)
class Recovery:
    fault: str
    api_seconds: float  # from the piece's restart to a write acknowledged through the gateway
    events_seconds: float  # ... to that write's event read from the stream


@dataclass
class Report:
    writes: int
    workers: int
    rate: float
    kinds: dict[str, Figures] = field(default_factory=dict)
    # Per service: outbox rows not published, idempotency records without their response.
    outbox_unpublished: dict[str, int] = field(default_factory=dict)
    service_keys_running: dict[str, int] = field(default_factory=dict)
    gateway_keys_running: int = 0  # claims still without an answer once every repeat is answered
    repeats_differing: int = 0  # a repeat of an acknowledged key not answered as the first time
    status_500: int = 0  # attempts answered 500, repeats included
    answers: Counter[int | str] = field(default_factory=Counter)  # every attempt's, by answer
    recoveries: list[Recovery] = field(default_factory=list)
    seconds: float = 0.0

    def failures(self) -> dict[str, int]:
        found = {
            f"{kind}: {name}": value
            for kind, figures in self.kinds.items()
            for name, value in figures.failures().items()
        }
        found |= {f"{s}: outbox unpublished": n for s, n in self.outbox_unpublished.items()}
        found |= {f"{s}: keys left running": n for s, n in self.service_keys_running.items()}
        found["gateway: keys left running"] = self.gateway_keys_running
        found["repeats answered differently"] = self.repeats_differing
        found["500 answers"] = self.status_500
        return {name: value for name, value in found.items() if value}

    def table(self) -> str:
        kinds = list(self.kinds)
        width = max(len(k) for k in kinds)
        lines = [
            f"fault run: {self.writes} writes, {self.workers} workers, {self.rate:g}/s,"
            f" {self.seconds:.0f} s",
            "",
            f"{'':<32}" + "".join(f"{k:>{width + 2}}" for k in kinds),
        ]
        names = ["acknowledged", *Figures().failures()]
        for name in names:
            values = [getattr(self.kinds[k], name) for k in kinds]
            lines.append(
                f"{name.replace('_', ' '):<32}" + "".join(f"{v:>{width + 2}}" for v in values)
            )
        lines.append("")
        for service, n in self.outbox_unpublished.items():
            lines.append(f"{service + ' outbox unpublished':<40}{n:>6}")
        for service, n in self.service_keys_running.items():
            lines.append(f"{service + ' keys left running':<40}{n:>6}")
        lines.append(f"{'gateway keys left running':<40}{self.gateway_keys_running:>6}")
        lines.append(f"{'repeats answered differently':<40}{self.repeats_differing:>6}")
        lines.append(f"{'500 answers':<40}{self.status_500:>6}")
        seen = ", ".join(f"{answer}: {n}" for answer, n in self.answers.most_common())
        lines += ["", f"attempts by answer: {seen}"]
        lines += ["", f"{'recovery after restart':<32}{'write acked':>12}{'event read':>12}"]
        for r in self.recoveries:
            lines.append(f"{r.fault:<32}{r.api_seconds:>11.1f}s{r.events_seconds:>11.1f}s")
        return "\n".join(lines)


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


class FaultRun:
    def __init__(
        self,
        target: Platform,
        writes: int,
        *,
        workers: int = 8,
        rate: float = 60.0,
        deadline: float = 60.0,
    ) -> None:
        self.platform = target
        self.writes = writes
        self.workers = workers
        self.rate = rate
        self.deadline = deadline
        self.kinds: list[WriteKind] = [kind() for kind in KINDS]
        self.ledger: list[Write] = []  # every logical write, probes and markers included
        self.repeats: list[Write] = []
        self.acknowledged = 0  # the workers' writes acknowledged so far: the faults' clock
        self.workers_done = False

    async def run(self) -> Report:
        started = time.monotonic()
        scopes = sorted({scope for kind in self.kinds for scope in kind.scopes})
        stack = self.platform.stack
        tenant_id, key = await asyncio.to_thread(stack.create_tenant, "faults", scopes)
        client = Client(stack.gateway_url, key, self.deadline)
        reader = EventReader(self.platform.nats.url, tenant_id)
        await reader.start()
        try:
            for kind in self.kinds:
                await kind.prepare(client, self.workers + 1)  # the last lane: the driver's
            faults = schedule(list(dict.fromkeys(kind.service for kind in self.kinds)))
            report = Report(self.writes, self.workers, self.rate)
            report.recoveries = await self._load(client, reader, faults)
            report.repeats_differing = await self._repeat(client)
            await self._probe(client, reader)  # the marker: written after everything else
            await reader.caught_up(PATIENCE_SECONDS)
            await self._verify(report, tenant_id, reader)
        finally:
            await reader.stop()
            await client.close()
        report.seconds = time.monotonic() - started
        return report

    async def _load(
        self, client: Client, reader: EventReader, faults: list[Fault]
    ) -> list[Recovery]:
        pacer = Pacer(self.rate)
        pattern = [kind for kind in self.kinds for _ in range(kind.weight)]

        async def worker(lane: int) -> None:
            for n in range(lane, self.writes, self.workers):
                await pacer.wait()
                write = pattern[n % len(pattern)].next_write(lane)
                self.ledger.append(write)
                await client.send(write)
                self.acknowledged += write.acknowledged

        async def load() -> None:
            try:
                await asyncio.gather(*(worker(lane) for lane in range(self.workers)))
            finally:
                self.workers_done = True

        async def drive() -> list[Recovery]:
            recoveries = []
            for i, fault in enumerate(faults, start=1):
                await self._progress(i * self.writes // (len(faults) + 1))
                await _until(
                    lambda: client.in_flight > 0 or self.workers_done, "a request in flight"
                )
                await asyncio.to_thread(self.platform.kill, fault)
                await asyncio.sleep(DOWN_SECONDS)
                await asyncio.to_thread(self.platform.start, fault)
                restarted = time.monotonic()
                acked, read = await self._probe(client, reader)
                recoveries.append(Recovery(fault.name, acked - restarted, read - restarted))
            return recoveries

        recoveries, _ = await asyncio.gather(drive(), load())
        return recoveries

    async def _progress(self, due: int) -> None:
        await _until(lambda: self.acknowledged >= due, f"{due} writes acknowledged")

    async def _probe(self, client: Client, reader: EventReader) -> tuple[float, float]:
        """One write of each kind, retried at once (the probe measures), until acknowledged
        and its event read: when the write was acknowledged, and when the event was read."""
        probes = [kind.next_write(self.workers) for kind in self.kinds]
        self.ledger += probes
        await asyncio.gather(*(client.send(p, patient=False) for p in probes))
        acked = time.monotonic()
        failed = [(p.label, p.statuses[-3:]) for p in probes if not p.acknowledged]
        assert not failed, f"the platform did not serve again: {failed}"
        events = [kind.event_of(p) for kind, p in zip(self.kinds, probes, strict=True)]
        return acked, await reader.wait_for(events, PATIENCE_SECONDS)

    async def _repeat(self, client: Client) -> int:
        """Send every acknowledged keyed write again: each must get its first answer."""
        keyed = [w for w in self.ledger if w.key and w.answer is not None]
        lanes = asyncio.Semaphore(self.workers)

        async def again(write: Write) -> bool:
            repeat = replace(write, statuses=[], answer=None)
            async with lanes:
                await client.send(repeat)
            self.repeats.append(repeat)
            return repeat.answer != write.answer

        return sum(await asyncio.gather(*(again(w) for w in keyed)))

    async def _verify(self, report: Report, tenant_id: str, reader: EventReader) -> None:
        for kind in self.kinds:
            writes = [w for w in self.ledger if w.kind == kind.name]
            async with await _connect(self.platform.superuser_url(kind.service)) as conn:
                report.kinds[kind.name] = await kind.verify(
                    writes, conn, tenant_id, reader.deliveries
                )
        for service in dict.fromkeys(kind.service for kind in self.kinds):
            async with await _connect(self.platform.superuser_url(service)) as conn:
                report.outbox_unpublished[service] = await _count(
                    conn, "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                # Recorded with the write and its response in one transaction: a record
                # without its response would be a key no repeat could ever get an answer for.
                report.service_keys_running[service] = await _count(
                    conn, "SELECT count(*) FROM idempotency_records WHERE response IS NULL"
                )
        async with await _connect(self.platform.superuser_url(GATEWAY)) as conn:
            # Running: claimed and never answered. Every caller has its answer and every
            # acknowledged key was repeated and answered, so a claim left now outlived the
            # request it stood for (a lapsed lease taken over is answered, not left).
            report.gateway_keys_running = await _count(
                conn,
                "SELECT count(*) FROM idempotency_keys WHERE tenant_id = %s"
                " AND status_code IS NULL",
                (tenant_id,),
            )
        report.answers = Counter(s for w in self.ledger + self.repeats for s in w.statuses)
        report.status_500 = report.answers[500]


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def _count(conn: psycopg.AsyncConnection[Any], query: str, params: Any = ()) -> int:
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return int(row[0])
