"""The forecast, the funnel and the win-rate report: read-only figures over deals.

Sums are computed by PostgreSQL over exact integers (numeric where they could overflow), and
everything rounded is rounded once, at the end, half away from zero (PostgreSQL's round of a
numeric), so the figures equal what a person computes by hand from the same deals.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

from crm.sales.v1 import sales_pb2
from crmkit import db
from crmkit.errors import Invalid
from trellis_sales import pipelines
from trellis_sales.domain import Period, StageKind

MAX_FORECAST_ROWS = 10_000
MAX_RANGE_DAYS = 3660

_FORECAST = """
SELECT to_char(date_trunc(%(period)s, d.close_date), 'YYYY-MM-DD') AS period_start,
       d.owner_id, d.currency,
       COALESCE(sum(d.amount) FILTER (WHERE s.kind = 'open' AND d.forecast_category = 'pipeline'), 0)::bigint
           AS pipeline_amount,
       COALESCE(sum(d.amount) FILTER (WHERE s.kind = 'open' AND d.forecast_category = 'best_case'), 0)::bigint
           AS best_case_amount,
       COALESCE(sum(d.amount) FILTER (WHERE s.kind = 'open' AND d.forecast_category = 'commit'), 0)::bigint
           AS commit_amount,
       COALESCE(sum(d.amount) FILTER (WHERE s.kind = 'closed_won'), 0)::bigint
           AS closed_won_amount,
       round(COALESCE(sum(d.amount::numeric * s.probability) FILTER (WHERE s.kind = 'open'), 0)
             / 100)::bigint AS weighted_amount,
       count(*) FILTER (WHERE s.kind = 'open') AS open_deals,
       count(*) FILTER (WHERE s.kind = 'closed_won') AS won_deals
FROM deals d JOIN stages s ON s.tenant_id = d.tenant_id AND s.id = d.stage_id
WHERE d.tenant_id = %(tenant_id)s AND d.close_date BETWEEN %(start)s AND %(end)s
  AND s.kind <> 'closed_lost' AND d.forecast_category <> 'omitted' {filters}
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
LIMIT %(limit)s
"""


D = TypeVar("D", bound=date)  # a date or a datetime


def checked_range(start: D | None, end: D | None, start_path: str, end_path: str) -> tuple[D, D]:
    """The range, both ends given, in order and at most MAX_RANGE_DAYS long; else Invalid."""
    out = [(p, "must be given") for p, v in ((start_path, start), (end_path, end)) if v is None]
    if start is None or end is None:
        raise Invalid(out)
    if end < start:
        raise Invalid([(end_path, f"must not be before {start_path}")])
    if (end - start).days > MAX_RANGE_DAYS:
        raise Invalid([(end_path, f"at most {MAX_RANGE_DAYS} days after {start_path}")])
    return start, end


def _filters(owner_id: str, pipeline_id: str, params: dict[str, Any]) -> str:
    sql = ""
    if owner_id:
        sql += " AND d.owner_id = %(owner_id)s"
        params["owner_id"] = owner_id
    if pipeline_id:
        sql += " AND d.pipeline_id = %(pipeline_id)s"
        params["pipeline_id"] = pipeline_id
    return sql


async def forecast(
    pool: db.Pool,
    tenant_id: str,
    period: Period,
    start: date,
    end: date,
    owner_id: str,
    pipeline_id: str,
) -> sales_pb2.Forecast:
    params: dict[str, Any] = {
        "tenant_id": tenant_id,
        "period": period.value,
        "start": start,
        "end": end,
        "limit": MAX_FORECAST_ROWS + 1,
    }
    query = _FORECAST.format(filters=_filters(owner_id, pipeline_id, params))
    async with db.tenant_tx(pool, tenant_id) as conn:
        rows = await db.fetch_all(conn, query, params)
    if len(rows) > MAX_FORECAST_ROWS:
        raise Invalid(
            [("end_date", f"more than {MAX_FORECAST_ROWS} rows: narrow the range or the owners")]
        )
    return sales_pb2.Forecast(rows=[sales_pb2.ForecastRow(**r) for r in rows])


async def funnel(
    pool: db.Pool, tenant_id: str, pipeline_id: str, start: datetime, end: datetime, now: datetime
) -> sales_pb2.FunnelReport:
    """Each open stage counts the cohort's deals that reached it or a later open stage (or
    won); a won stage counts those that entered it. Lost stages are not steps: a deal lost
    from a stage reached that stage."""
    async with db.tenant_tx(pool, tenant_id) as conn:
        if not pipeline_id:
            await pipelines.ensure_tenant(conn, tenant_id, now)
            pipeline_id = await pipelines.default_id(conn, tenant_id)
        pipeline = await pipelines.select(conn, tenant_id, pipeline_id)
        rows = await db.fetch_all(
            conn,
            """
            SELECT d.id, d.stage_id, array_agg(sc.to_stage_id) AS entered
            FROM deals d JOIN stage_changes sc ON sc.tenant_id = d.tenant_id AND sc.deal_id = d.id
            WHERE d.tenant_id = %s AND d.pipeline_id = %s
              AND d.create_time >= %s AND d.create_time < %s
            GROUP BY d.id, d.stage_id
            """,
            (tenant_id, pipeline_id, start, end),
        )
    stages = pipeline.fields.stages
    opens = [s for s in stages if s.kind is StageKind.OPEN]
    wons = [s for s in stages if s.kind is StageKind.CLOSED_WON]
    rank = {s.id: i for i, s in enumerate(opens)} | {s.id: len(opens) for s in wons}
    kinds = {s.id: s.kind for s in stages}
    furthest: list[int] = []
    entered: list[set[str]] = []
    lost = 0
    for row in rows:
        ids = {str(x) for x in row["entered"]}
        entered.append(ids)
        furthest.append(max((rank[i] for i in ids if i in rank), default=-1))
        lost += kinds.get(str(row["stage_id"])) is StageKind.CLOSED_LOST
    steps = []
    previous: int | None = None
    for i, stage in enumerate(opens):
        steps.append(_step(stage.id, stage.name, sum(f >= i for f in furthest), previous))
        previous = steps[-1].reached
    for stage in wons:
        steps.append(_step(stage.id, stage.name, sum(stage.id in e for e in entered), previous))
    return sales_pb2.FunnelReport(pipeline_id=pipeline_id, steps=steps, lost=lost)


def _step(stage_id: str, name: str, reached: int, previous: int | None) -> sales_pb2.FunnelStep:
    rate = 1.0 if previous is None else (reached / previous if previous else 0.0)
    return sales_pb2.FunnelStep(
        stage_id=stage_id, stage_name=name, reached=reached, conversion_rate=rate
    )


async def win_rate(
    pool: db.Pool,
    tenant_id: str,
    start: datetime,
    end: datetime,
    owner_id: str,
    pipeline_id: str,
) -> sales_pb2.WinRateReport:
    params: dict[str, Any] = {"tenant_id": tenant_id, "start": start, "end": end}
    closed = f"""
        FROM deals d JOIN stages s ON s.tenant_id = d.tenant_id AND s.id = d.stage_id
        WHERE d.tenant_id = %(tenant_id)s AND d.close_time >= %(start)s AND d.close_time < %(end)s
          {_filters(owner_id, pipeline_id, params)}
    """
    async with db.tenant_tx(pool, tenant_id) as conn:
        totals = await db.fetch_one(
            conn,
            "SELECT count(*) FILTER (WHERE s.kind = 'closed_won') AS won,"
            " count(*) FILTER (WHERE s.kind = 'closed_lost') AS lost,"
            " avg(extract(epoch FROM d.close_time - d.create_time))"
            " FILTER (WHERE s.kind = 'closed_won') AS cycle" + closed,
            params,
        )
        amounts = await db.fetch_all(
            conn,
            "SELECT d.currency, count(*) AS won_deals, sum(d.amount)::bigint AS won_amount,"
            " round(avg(d.amount::numeric))::bigint AS average_deal_size"
            + closed
            + " AND s.kind = 'closed_won' GROUP BY d.currency ORDER BY d.currency",
            params,
        )
    assert totals is not None
    won, lost = totals["won"], totals["lost"]
    report = sales_pb2.WinRateReport(
        won_deals=won,
        lost_deals=lost,
        win_rate=won / (won + lost) if won + lost else 0.0,
        amounts=[sales_pb2.CurrencyAmounts(**a) for a in amounts],
    )
    if totals["cycle"] is not None:
        nanos = (Decimal(totals["cycle"]) * 10**9).to_integral_value(ROUND_HALF_UP)
        report.average_sales_cycle.FromNanoseconds(int(nanos))
    return report
