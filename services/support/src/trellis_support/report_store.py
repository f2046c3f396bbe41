"""SQL of the support report: figures over the tickets created in [start, end).

Response and resolution times are calendar time (created -> first public agent reply, and
created -> the last solve of tickets solved or closed now); medians and 90th percentiles
interpolate (percentile_cont). SLA compliance counts first-response and resolution targets:
breached when their breach timer fired, met when done without it. The backlog is each
unsolved ticket's status as of `end`, from the status history. CSAT counts the ratings given
in the range.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crmkit import db
from trellis_support.domain import Priority
from trellis_support.sla import Target
from trellis_support.workflow import DONE, Status


@dataclass(frozen=True)
class Times:
    group: str
    tickets: int
    responded: int
    first_response_median: float | None  # seconds
    first_response_p90: float | None
    resolved: int
    resolution_median: float | None
    resolution_p90: float | None


@dataclass(frozen=True)
class Compliance:
    target: Target
    met: int
    breached: int


@dataclass(frozen=True)
class Report:
    by_priority: list[Times]
    by_team: list[Times]
    compliance: list[Compliance]
    backlog: dict[Status, int]
    ratings: int
    rating_average: float


_TIMES = """
WITH r AS (
    SELECT {group} AS grp,
           extract(epoch FROM first_response_at - create_time) AS first_response,
           CASE WHEN status = ANY(%(done)s::text[])
                THEN extract(epoch FROM solved_at - create_time) END AS resolution
    FROM tickets
    WHERE tenant_id = %(tenant_id)s AND create_time >= %(start)s AND create_time < %(end)s
)
SELECT grp, count(*) AS tickets,
       count(first_response) AS responded,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY first_response) AS fr_median,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY first_response) AS fr_p90,
       count(resolution) AS resolved,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution) AS res_median,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY resolution) AS res_p90
FROM r GROUP BY grp ORDER BY {order}
"""
_PRIORITY_ORDER = "array_position(%(priorities)s::text[], grp)"
_COMPLIANCE = """
SELECT s.target,
       count(*) FILTER (WHERE s.fired_at IS NOT NULL) AS breached,
       count(*) FILTER (WHERE s.fired_at IS NULL AND CASE s.target
           WHEN 'first_response' THEN t.first_response_at IS NOT NULL
           ELSE t.status = ANY(%(done)s::text[]) END) AS met
FROM sla_timers s
JOIN tickets t ON t.tenant_id = s.tenant_id AND t.id = s.ticket_id
WHERE s.tenant_id = %(tenant_id)s AND s.kind = 'breach' AND s.cycle = 0
  AND s.target IN ('first_response', 'resolution')
  AND t.create_time >= %(start)s AND t.create_time < %(end)s
GROUP BY s.target
"""
_BACKLOG = """
SELECT status, count(*) AS tickets FROM (
    SELECT DISTINCT ON (s.ticket_id) s.status
    FROM ticket_statuses s
    JOIN tickets t ON t.tenant_id = s.tenant_id AND t.id = s.ticket_id
    WHERE s.tenant_id = %(tenant_id)s AND t.create_time < %(end)s AND s.at < %(end)s
    ORDER BY s.ticket_id, s.seq DESC
) latest
WHERE status <> ALL(%(done)s::text[])
GROUP BY status
"""
_CSAT = """
SELECT count(*) AS ratings, coalesce(avg(csat_rating), 0)::float8 AS average
FROM tickets
WHERE tenant_id = %(tenant_id)s AND csat_time >= %(start)s AND csat_time < %(end)s
"""


def _times(row: dict[str, Any]) -> Times:
    return Times(
        group=row["grp"],
        tickets=row["tickets"],
        responded=row["responded"],
        first_response_median=row["fr_median"],
        first_response_p90=row["fr_p90"],
        resolved=row["resolved"],
        resolution_median=row["res_median"],
        resolution_p90=row["res_p90"],
    )


async def report(pool: db.Pool, tenant_id: str, start: datetime, end: datetime) -> Report:
    params = {
        "tenant_id": tenant_id,
        "start": start,
        "end": end,
        "done": sorted(s.value for s in DONE),
        "priorities": [p.value for p in Priority],  # the enum's order is the report's
    }
    async with db.tenant_tx(pool, tenant_id) as conn:
        by_priority = await db.fetch_all(
            conn, _TIMES.format(group="priority", order=_PRIORITY_ORDER), params
        )
        by_team = await db.fetch_all(conn, _TIMES.format(group="team", order="grp"), params)
        compliance = await db.fetch_all(conn, _COMPLIANCE, params)
        backlog = await db.fetch_all(conn, _BACKLOG, params)
        csat = await db.fetch_one(conn, _CSAT, params)
    assert csat is not None
    found = {Target(r["target"]): r for r in compliance}
    return Report(
        by_priority=[_times(r) for r in by_priority],
        by_team=[_times(r) for r in by_team],
        compliance=[
            Compliance(
                t, found[t]["met"] if t in found else 0, found[t]["breached"] if t in found else 0
            )
            for t in (Target.FIRST_RESPONSE, Target.RESOLUTION)
        ],
        backlog={Status(r["status"]): r["tickets"] for r in backlog},
        ratings=csat["ratings"],
        rating_average=csat["average"],
    )
