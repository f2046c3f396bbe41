"""The fault run: writes through the gateway from concurrent callers while the platform's
pieces are killed one at a time, and the figures that say what held.

The callers write at a steady pace until every fault is over (and at least the run's number of
writes has been started). Faults are spaced by progress, a share of the writes acknowledged
since the last recovery, not by time; each strikes with writes in flight (platform.py), keeps
its piece down for a moment, starts it again and measures how soon a write is acknowledged
through the gateway and its event read from the stream. After the last fault every
acknowledged key is sent once more, one last write of each kind marks the end, and once the
event reader has read that and has nothing pending, the database, the stream and the callers'
record are compared."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from tests.faults.client import Client, Pacer, Write
from tests.faults.events import EventReader
from tests.faults.kinds import KINDS, Figures, WriteKind
from tests.faults.platform import PATIENCE_SECONDS, Fault, Platform, count, schedule, until
from trellis_devstack.declaration import GATEWAY

# How long a killed piece stays down: long enough for the callers to find it gone.
DOWN_SECONDS = 1.0


@dataclass(frozen=True)
class Recovery:
    fault: str
    at: float  # seconds into the writes when it struck
    caught: str  # what the fault caught in flight
    api_seconds: float  # from the piece's restart to a write acknowledged through the gateway
    events_seconds: float  # ... to that write's event read from the stream


@dataclass
class Report:
    writes: int  # the workers' logical writes (the probes and the marker besides)
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
    problems: Counter[str] = field(default_factory=Counter)  # problem answers, by detail
    # What the event reader got: deliveries, stream messages, event ids. Redeliveries and
    # re-publications of one event are allowed; the kinds' figures count distinct events.
    events_read: tuple[int, int, int] = (0, 0, 0)
    recoveries: list[Recovery] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds each part of the run took

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
            f"fault run: {self.writes} writes, {self.workers} workers, {self.rate:g}/s; "
            + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.phases.items()),
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
        lines += [f"  {n:>6} x {problem}" for problem, n in self.problems.most_common()]
        deliveries, messages, ids = self.events_read
        lines.append(
            f"events read: {deliveries} deliveries of {messages} messages, {ids} event ids"
        )
        lines += [
            "",
            f"{'fault':<24}{'at':>6}{'after restart: write acked':>28}{'event read':>12}"
            "   caught in flight",
        ]
        for r in self.recoveries:
            lines.append(
                f"{r.fault:<24}{r.at:>5.0f}s{r.api_seconds:>27.1f}s{r.events_seconds:>11.1f}s"
                f"   {r.caught}"
            )
        return "\n".join(lines)


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
        self.started = 0  # the workers' writes started so far
        self.acknowledged = 0  # and acknowledged: the faults' clock
        # The services written to, and those written to with Idempotency-Keys.
        self.writers = list(dict.fromkeys(kind.service for kind in self.kinds))
        self.keyed = list(dict.fromkeys(kind.service for kind in self.kinds if kind.keyed))

    async def run(self) -> Report:
        scopes = sorted({scope for kind in self.kinds for scope in kind.scopes})
        stack = self.platform.stack
        tenant_id, key = await asyncio.to_thread(stack.create_tenant, "faults", scopes)
        client = Client(stack.gateway_url, key, self.deadline)
        reader = EventReader(self.platform.nats.url, tenant_id)
        await reader.start()
        report = Report(self.writes, self.workers, self.rate)
        try:
            with _timed(report.phases, "prepare"):
                for kind in self.kinds:
                    await kind.prepare(client, self.workers + 1)  # the last lane: the driver's
            with _timed(report.phases, "writes and faults"):
                report.recoveries = await self._load(client, reader, schedule(self.writers))
            report.writes = self.started
            with _timed(report.phases, "repeats"):
                report.repeats_differing = await self._repeat(client)
            with _timed(report.phases, "marker and catch-up"):
                await self._probe(client, reader)  # the marker: written after everything else
                await reader.caught_up(PATIENCE_SECONDS)
            with _timed(report.phases, "checks"):
                await self._verify(report, tenant_id, reader)
            report.problems = client.problems
        finally:
            await reader.stop()
            await client.close()
        return report

    async def _load(
        self, client: Client, reader: EventReader, faults: list[Fault]
    ) -> list[Recovery]:
        """Write at the run's pace until every fault is over and at least `writes` were
        started, so that every fault strikes writes of every kind in flight."""
        pacer = Pacer(self.rate)
        pattern = [kind for kind in self.kinds for _ in range(kind.weight)]
        faults_over = False

        async def worker(lane: int) -> None:
            turn = lane  # each lane writes every kind in turn, the lanes out of step
            while not (faults_over and self.started >= self.writes):
                self.started += 1
                await pacer.wait()
                write = pattern[turn % len(pattern)].next_write(lane)
                turn += 1
                self.ledger.append(write)
                await client.send(write)
                self.acknowledged += write.acknowledged

        async def drive() -> list[Recovery]:
            nonlocal faults_over
            # Spaced by acknowledged writes: the platform served that many between faults.
            gap = max(1, self.writes // (len(faults) + 1))
            recoveries = []
            began = time.monotonic()
            for fault in faults:
                await self._progress(self.acknowledged + gap)
                at = time.monotonic() - began
                caught = await self.platform.strike(fault, self.writers, self.keyed)
                await asyncio.sleep(DOWN_SECONDS)
                await asyncio.to_thread(self.platform.start, fault)
                restarted = time.monotonic()
                acked, read = await self._probe(client, reader)
                recoveries.append(
                    Recovery(fault.name, at, caught, acked - restarted, read - restarted)
                )
            faults_over = True
            return recoveries

        workers = [asyncio.create_task(worker(lane)) for lane in range(self.workers)]
        try:
            recoveries = await drive()
        except BaseException:
            for task in workers:  # they would write on forever
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        await asyncio.gather(*workers)
        return recoveries

    async def _progress(self, due: int) -> None:
        async def reached() -> bool:
            return self.acknowledged >= due

        await until(reached, f"{due} writes acknowledged")

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
                report.outbox_unpublished[service] = await count(
                    conn, "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                # Recorded with the write and its response in one transaction: a record
                # without its response would be a key no repeat could ever get an answer for.
                report.service_keys_running[service] = await count(
                    conn, "SELECT count(*) FROM idempotency_records WHERE response IS NULL"
                )
        async with await _connect(self.platform.superuser_url(GATEWAY)) as conn:
            # Running: claimed and never answered. Every caller has its answer and every
            # acknowledged key was repeated and answered, so a claim left now outlived the
            # request it stood for (a lapsed lease taken over is answered, not left).
            report.gateway_keys_running = await count(
                conn,
                "SELECT count(*) FROM idempotency_keys WHERE tenant_id = %s"
                " AND status_code IS NULL",
                (tenant_id,),
            )
        report.events_read = (
            len(reader.deliveries),
            len({d.stream_seq for d in reader.deliveries}),
            len({d.ce_id for d in reader.deliveries}),
        )
        report.answers = Counter(s for w in self.ledger + self.repeats for s in w.statuses)
        report.status_500 = report.answers[500]


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    phases[name] = time.monotonic() - started


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)
