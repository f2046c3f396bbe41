"""A worker over a queue kept in PostgreSQL: the webhook dispatcher and the mailer are two.

It wakes when rows are queued (LISTEN/NOTIFY on the queue's channel) or one of its own jobs
ends, and polls as a fallback (retries fall due with time). Each round claims at most as
many rows as it has free slots and runs one task per row; at `stop()` it claims nothing more
and lets the jobs in flight finish (each is bounded by its own timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

from crmkit import bus, db, listen

log = logging.getLogger(__name__)

T = TypeVar("T")


class QueueWorker(ABC, Generic[T]):
    def __init__(
        self, pool: db.Pool, channel: str, *, concurrency: int, poll_interval: float
    ) -> None:
        self._pool = pool
        self._channel = channel
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

    @abstractmethod
    async def claim(self, free: int) -> Sequence[T]:
        """Take up to `free` due rows."""

    @abstractmethod
    async def work(self, item: T) -> None:
        """Do one row's job; log what goes wrong (a lapsed claim is taken up again)."""

    def started(self, item: T) -> None:
        """Called when a job starts (bookkeeping of subclasses)."""

    def finished(self, item: T) -> None:
        """Called when a job ends."""

    async def run(self) -> None:
        listener = asyncio.create_task(
            listen.wake_on_notify(self._pool, self._channel, self._wake, self._stopping),
            name=f"{self._channel}-listen",
        )
        try:
            await self._loop()
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await asyncio.gather(*self._running, return_exceptions=True)
            await self.closed()

    async def closed(self) -> None:
        """Release what the jobs used, once the last one ended."""

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()  # before the round: a wake during it triggers another
            try:
                full = await self._round()
            except Exception as err:
                failures += 1
                delay = bus.retry_delay(failures)
                log.warning(
                    "queue claim failed",
                    exc_info=failures == 1,
                    extra={
                        "queue": self._channel,
                        "error": repr(err),
                        "retry_in_seconds": round(delay, 2),
                    },
                )
                await self._wait(delay)
                continue
            failures = 0
            if not full:
                await self._wait(self._poll_interval)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _round(self) -> bool:
        """Claim and start what is due; True when every free slot was filled (more may wait)."""
        free = self._concurrency - len(self._running)
        if free <= 0:
            return False
        items = await self.claim(free)
        for item in items:
            self.started(item)
            task = asyncio.create_task(self._job(item))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return len(items) == free

    async def _job(self, item: T) -> None:
        try:
            await self.work(item)
        except Exception:
            log.exception("queue job failed", extra={"queue": self._channel})
        finally:
            self.finished(item)
            self._wake.set()  # a slot is free, and what waited on this row may be due
