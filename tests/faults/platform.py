"""The fault run's own platform, and the faults it suffers.

Each fault strikes at the worst moment for the writes in flight, made to happen rather than
hoped for: the run holds a table lock so that writes wait where the fault should catch them
(mid-transaction, mid-query in the gateway's own database, between a commit and its answer),
sees them waiting in pg_locks, and only then kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from trellis_devstack.declaration import GATEWAY
from trellis_devstack.infra import Nats, Postgres
from trellis_devstack.processes import ServiceProcesses
from trellis_devstack.stack import Stack
from trellis_devstack.testing import NO_RATE_LIMITS, eventually

NATS_SERVER, POSTGRES = "nats-server", "postgres"
# Whatever the run waits for (a recovery, an event, progress) is a failure after this long.
PATIENCE_SECONDS = 120.0
# Warnings and errors are what the logs are kept for.
QUIET = {"LOG_LEVEL": "WARNING"}
# The writes under test waiting for a table: INSERTs (a record's event, a key's claim), which
# ask for ROW EXCLUSIVE on it. UPDATEs and DELETEs ask for the same, but on these tables they
# are the chassis' own (the periodic clean-up, a key's completion) and add no rows; the relay's
# SELECT ... FOR UPDATE asks for less.
_WRITERS_WAITING = (
    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
    " WHERE NOT l.granted AND l.mode = 'RowExclusiveLock' AND l.relation = to_regclass(%s)"
    " AND a.query ~* '^\\s*insert\\s'"
)
Conn = psycopg.AsyncConnection[Any]


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    await eventually(check, what, within=PATIENCE_SECONDS, interval=0.02)


async def count(conn: Conn, query: str | sql.Composed, params: Any = ()) -> int:
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return int(row[0])


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


class Services(ServiceProcesses):
    """The services, started (and started again after a fault) without rate limits, which
    the chart's entries would otherwise set over the stack's environment."""

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        super().start(name, {**NO_RATE_LIMITS, **(extra_env or {})})


class Hold:
    """An EXCLUSIVE lock on one table of a service's database: its writers wait, mid-query and
    mid-transaction, until it is released (or until the server dies under them)."""

    def __init__(self, holder: Conn, watcher: Conn, table: str) -> None:
        self._holder = holder
        self._watcher = watcher
        self._table = table

    async def writers(self) -> int:
        """How many writers wait on the table now."""
        return await count(self._watcher, _WRITERS_WAITING, (self._table,))

    async def rows(self) -> int:
        return await count(
            self._watcher, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self._table))
        )

    async def release(self) -> None:
        with contextlib.suppress(psycopg.Error):  # a server that died took the lock with it
            await self._holder.close()


@dataclass
class Platform:
    """The run's own PostgreSQL, NATS and services: it kills them, so no other test may
    share them."""

    postgres: Postgres
    nats: Nats
    stack: Stack
    processes: Services

    def superuser_url(self, service: str) -> str:
        """The service's database as the superuser, whom row-level security does not bind."""
        return self.postgres.url(f"{self.stack.db_prefix}{service}")

    @contextlib.asynccontextmanager
    async def hold(self, service: str, table: str) -> AsyncIterator[Hold]:
        url = self.superuser_url(service)
        holder = await psycopg.AsyncConnection.connect(url)
        watcher = await psycopg.AsyncConnection.connect(url, autocommit=True)
        held = Hold(holder, watcher, table)
        try:
            lock = sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(table))
            await holder.execute(lock)
            yield held
        finally:
            await held.release()
            with contextlib.suppress(psycopg.Error):
                await watcher.close()

    async def strike(self, fault: Fault, writers: Sequence[str], keyed: Sequence[str]) -> str:
        """Take the fault's piece down; says what it caught in flight. `writers` are the
        services the run writes to, `keyed` those it writes to with Idempotency-Keys."""
        if fault.piece == NATS_SERVER:
            # The relays' publishes in flight are cut; writes need no NATS.
            await asyncio.to_thread(self.nats.kill)
            return ""
        if fault.piece == POSTGRES:
            return await self._kill_postgres(writers, keyed)
        if fault.piece != GATEWAY:
            return await self._kill_service(fault.piece)
        if fault.graceful:
            return await self._stop_gateway(keyed)
        return await self._kill_gateway(keyed)

    def start(self, fault: Fault) -> None:
        if fault.piece == NATS_SERVER:
            self.nats.start()
        elif fault.piece == POSTGRES:
            self.postgres.start()
        else:
            self.processes.start(fault.piece)

    async def _kill_postgres(self, writers: Sequence[str], keyed: Sequence[str]) -> str:
        """The postmaster dies under the other writes mid-transaction in their services and
        under the gateway's own queries (claims on keys: its database dropping connections
        mid-request; keyed writes wait there and never get further)."""
        async with contextlib.AsyncExitStack() as held:
            # The services first: once the gateway's claims wait, every lane soon waits on
            # one, and no write of another kind would come to be held.
            holds = {
                service: await held.enter_async_context(self.hold(service, "outbox"))
                for service in writers
                if service not in keyed
            }
            await until(lambda: _all_wait(holds.values()), "writes waiting in the services")
            holds[GATEWAY] = await held.enter_async_context(self.hold(GATEWAY, "idempotency_keys"))
            await until(lambda: _all_wait([holds[GATEWAY]]), "a claim waiting in the gateway")
            cut = {service: await h.writers() for service, h in holds.items()}
            await asyncio.to_thread(self.postgres.kill)
        return "queries cut: " + ", ".join(f"{s} {n}" for s, n in cut.items())

    async def _kill_service(self, service: str) -> str:
        async with self.hold(service, "outbox") as outbox:
            await until(lambda: _all_wait([outbox]), f"a write waiting in {service}")
            cut = await outbox.writers()
            await asyncio.to_thread(self.processes.kill, service)
        return f"{cut} writes cut mid-transaction"

    async def _kill_gateway(self, keyed: Sequence[str]) -> str:
        """The gateway dies after the services committed writes and before it answered them:
        their callers never hear, and the gateway's claims on their keys are left running
        (issue 13's 2 of 4,000). Their retries must get the first answers, not second records."""
        async with contextlib.AsyncExitStack() as held:
            outboxes = [await held.enter_async_context(self.hold(s, "outbox")) for s in keyed]
            await until(lambda: _all_wait(outboxes), "writes waiting in the services")
            # Their answers will wait on the gateway's key store, and no new write gets past it.
            await held.enter_async_context(self.hold(GATEWAY, "idempotency_keys"))
            held_writes = [(o, await o.rows(), await o.writers()) for o in outboxes]
            for outbox in outboxes:
                await outbox.release()

            async def committed() -> bool:
                return all([await o.rows() >= rows + n for o, rows, n in held_writes])

            await until(committed, "the held writes to commit")
            await asyncio.to_thread(self.processes.kill, GATEWAY)
        return f"answers lost after commit: {sum(n for _, _, n in held_writes)}"

    async def _stop_gateway(self, keyed: Sequence[str]) -> str:
        """SIGTERM while calls are in flight, which the gateway lets finish in its grace."""
        async with contextlib.AsyncExitStack() as held:
            outboxes = [await held.enter_async_context(self.hold(s, "outbox")) for s in keyed]
            await until(lambda: _all_wait(outboxes), "writes waiting in the services")
            in_flight = sum([await o.writers() for o in outboxes])
            stopped = asyncio.create_task(asyncio.to_thread(self.processes.stop, GATEWAY))
            await until(self._gateway_not_ready, "the gateway to begin its shutdown")
            for outbox in outboxes:
                await outbox.release()
            exit_code = await stopped
        assert exit_code == 0, f"the gateway exited with {exit_code} after SIGTERM"
        return f"calls in flight at SIGTERM: {in_flight}"

    async def _gateway_not_ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as probe:
                r = await probe.get(f"{self.stack.gateway_url}/readyz")
        except httpx.TransportError:
            return True  # no longer listening
        return r.status_code != 200


async def _all_wait(holds: Iterable[Hold]) -> bool:
    """Whether a writer waits on every table held."""
    return all([await h.writers() > 0 for h in holds])


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
        stack = Stack.ephemeral(postgres, nats.url, extra_env=QUIET)
        processes = Services(stack, logs)
        running.callback(processes.stop_all)
        processes.start_all()
        processes.wait_ready()
        yield Platform(postgres, nats, stack, processes)
