"""Projections: a service's copy of another service's records, kept from their events.

Events come at least once and, across records, in any order; one record's events carry its
version (ce-recordversion). `advance` records the newest version a projection has applied,
deletions included, and says whether this event is newer: only then does the handler apply
it. A stale or repeated event is counted and skipped, never an error, so the copy ends up
as the source left the record whatever the delivery order.
"""

from __future__ import annotations

from crmkit import db, metrics
from crmkit.consumer import Event

_ADVANCE = """
INSERT INTO projection_versions (tenant_id, projection, record_id, version)
VALUES (%s, %s, %s, %s)
ON CONFLICT (tenant_id, projection, record_id) DO UPDATE SET version = EXCLUDED.version
WHERE projection_versions.version < EXCLUDED.version
RETURNING 1 AS applied
"""


async def advance(conn: db.Conn, projection: str, event: Event) -> bool:
    """True when `event` is newer than what `projection` holds of its record (ce-subject)."""
    cur = await conn.execute(
        _ADVANCE, (event.tenant_id, projection, event.subject, event.record_version)
    )
    if await cur.fetchone() is not None:
        return True
    metrics.projections().labels(projection).inc()
    return False
