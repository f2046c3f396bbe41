"""Retention of the chassis tables: published outbox rows, inbox rows, idempotency keys.

Each clean-up spans tenants, so it runs through a SECURITY DEFINER function of the chassis
migrations, bounded per call; a worker runs them every so often in every replica (they are
idempotent, so replicas running them at once only share the work).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from crmkit import db
from crmkit.periodic import Periodic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    # Published events stay a day, for inspection; the stream keeps them for replay.
    outbox: timedelta = timedelta(hours=24)
    # As long as the stream keeps events: a re-driven or replayed event is still recognised.
    inbox: timedelta = timedelta(days=30)
    # As long as the gateway remembers a key: a client's retry window.
    idempotency: timedelta = timedelta(hours=24)


_PURGES = (
    ("outbox", "SELECT crm_outbox_cleanup(%s) AS n"),
    ("inbox", "SELECT crm_inbox_purge(%s) AS n"),
    ("idempotency", "SELECT crm_idempotency_purge(%s) AS n"),
)


async def purge(pool: db.Pool, retention: Retention) -> dict[str, int]:
    """One round of every clean-up; the rows removed per table."""
    removed: dict[str, int] = {}
    async with pool.connection() as conn:
        for table, query in _PURGES:
            cur = await conn.execute(query, (getattr(retention, table),))
            row = await cur.fetchone()
            removed[table] = int(row["n"]) if row else 0
    if any(removed.values()):
        log.info("retention clean-up", extra={"removed": removed})
    return removed


def worker(pool: db.Pool, retention: Retention, interval: float = 60.0) -> Periodic:
    return Periodic("chassis retention", interval, lambda: purge(pool, retention))
