"""Forecast, funnel and win rate equal figures computed by hand on a fixed data set."""

from __future__ import annotations

from datetime import timedelta

from google.protobuf import timestamp_pb2

from crm.sales.v1 import sales_pb2

from .support import Running, Tenant, create_deal, default_pipeline


def _stamp(moment: object) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)  # type: ignore[arg-type]
    return stamp


async def test_forecast_by_period_owner_and_currency(service: Running, tenant: Tenant) -> None:
    s = (await default_pipeline(service, tenant)).stages  # 20, 40, 60, 80, 90 %, won, lost
    best, commit = sales_pb2.FORECAST_CATEGORY_BEST_CASE, sales_pb2.FORECAST_CATEGORY_COMMIT
    data = [
        # (owner, currency, amount, close date, stage, category)
        ("ann", "EUR", 1000, "2025-01-10", s[0].id, 0),  # pipeline, weighted 200
        ("ann", "EUR", 333, "2025-02-27", s[1].id, best),  # best case, weighted 133.2
        ("ann", "EUR", 999, "2025-03-31", s[4].id, commit),  # commit, weighted 899.1
        ("ann", "EUR", 700, "2025-03-01", s[5].id, 0),  # won
        ("ann", "EUR", 5000, "2025-03-02", s[6].id, 0),  # lost: left out
        ("ann", "EUR", 250, "2025-01-05", s[2].id, sales_pb2.FORECAST_CATEGORY_OMITTED),
        ("ann", "USD", 1001, "2025-02-01", s[2].id, 0),  # pipeline, weighted 600.6
        ("bob", "EUR", 10, "2025-04-01", s[3].id, commit),  # Q2
        ("bob", "EUR", 99, "2024-12-31", s[0].id, 0),  # before the range
    ]
    for owner, currency, amount, close, stage, category in data:
        await create_deal(
            service,
            tenant,
            owner_id=owner,
            currency=currency,
            amount=amount,
            close_date=close,
            stage_id=stage,
            forecast_category=category,
        )

    async def rows(period: sales_pb2.Period.ValueType) -> list[tuple[object, ...]]:
        got = await service.stub.GetForecast(
            sales_pb2.GetForecastRequest(
                period=period,
                start_date="2025-01-01",
                end_date="2025-06-30",
            ),
            metadata=tenant.md(),
        )
        return [
            (
                r.period_start,
                r.owner_id,
                r.currency,
                r.pipeline_amount,
                r.best_case_amount,
                r.commit_amount,
                r.closed_won_amount,
                r.weighted_amount,
                r.open_deals,
                r.won_deals,
            )
            for r in got.rows
        ]

    assert await rows(sales_pb2.PERIOD_QUARTER) == [
        # 200 + 133.2 + 899.1 = 1232.3 -> 1232
        ("2025-01-01", "ann", "EUR", 1000, 333, 999, 700, 1232, 3, 1),
        ("2025-01-01", "ann", "USD", 1001, 0, 0, 0, 601, 1, 0),
        ("2025-04-01", "bob", "EUR", 0, 0, 10, 0, 8, 1, 0),
    ]
    assert await rows(sales_pb2.PERIOD_MONTH) == [
        ("2025-01-01", "ann", "EUR", 1000, 0, 0, 0, 200, 1, 0),
        ("2025-02-01", "ann", "EUR", 0, 333, 0, 0, 133, 1, 0),
        ("2025-02-01", "ann", "USD", 1001, 0, 0, 0, 601, 1, 0),
        ("2025-03-01", "ann", "EUR", 0, 0, 999, 700, 899, 1, 1),
        ("2025-04-01", "bob", "EUR", 0, 0, 10, 0, 8, 1, 0),
    ]


async def test_funnel_and_win_rate(service: Running, tenant: Tenant) -> None:
    pipeline = await default_pipeline(service, tenant)
    s = pipeline.stages
    start = service.clock.now

    async def deal(path: list[int], amount: int, currency: str, hours: int) -> None:
        made = await create_deal(service, tenant, amount=amount, currency=currency)
        for index in path:
            service.clock.advance(timedelta(hours=hours))
            await service.stub.UpdateDeal(
                sales_pb2.UpdateDealRequest(id=made.id, deal=sales_pb2.Deal(stage_id=s[index].id)),
                metadata=tenant.md(),
            )

    try:
        await deal([], 100, "EUR", 1)  # stays in stage 0
        await deal([1, 2], 100, "EUR", 1)  # reached stage 2
        await deal([3, 5], 400, "EUR", 10)  # skipped ahead and won after 20 h
        await deal([1, 5], 301, "EUR", 2)  # won after 4 h
        await deal([1, 6], 500, "USD", 1)  # lost from stage 1
        await deal([5], 1000, "USD", 6)  # won after 6 h
    finally:
        end = service.clock.now + timedelta(seconds=1)
    funnel = await service.stub.GetFunnelReport(
        sales_pb2.GetFunnelReportRequest(start_time=_stamp(start), end_time=_stamp(end)),
        metadata=tenant.md(),
    )
    assert funnel.pipeline_id == pipeline.id
    assert [(x.stage_id, x.reached) for x in funnel.steps] == [
        (s[0].id, 6),
        (s[1].id, 5),
        (s[2].id, 4),
        (s[3].id, 3),
        (s[4].id, 3),
        (s[5].id, 3),
    ]
    assert [round(x.conversion_rate, 4) for x in funnel.steps] == [1, 0.8333, 0.8, 0.75, 1, 1]
    assert funnel.lost == 1

    report = await service.stub.GetWinRateReport(
        sales_pb2.GetWinRateReportRequest(start_time=_stamp(start), end_time=_stamp(end)),
        metadata=tenant.md(),
    )
    assert (report.won_deals, report.lost_deals) == (3, 1)
    assert report.win_rate == 0.75
    assert report.average_sales_cycle.ToTimedelta() == timedelta(hours=(20 + 4 + 6) / 3)
    assert [
        (a.currency, a.won_deals, a.won_amount, a.average_deal_size) for a in report.amounts
    ] == [
        ("EUR", 2, 701, 351),  # 350.5 rounds half up
        ("USD", 1, 1000, 1000),
    ]
