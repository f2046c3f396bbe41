"""Deals: stage moves keep a history and emit their events once; pipelines guard their stages."""

from __future__ import annotations

import asyncio

import grpc

from crm.sales.v1 import sales_pb2
from trellis_devstack.testing import failure

from .support import Running, Tenant, create_deal, default_pipeline


async def _move(service: Running, tenant: Tenant, deal_id: str, stage_id: str) -> sales_pb2.Deal:
    return await service.stub.UpdateDeal(
        sales_pb2.UpdateDealRequest(id=deal_id, deal=sales_pb2.Deal(stage_id=stage_id)),
        metadata=tenant.md(principal="rep-7"),
    )


async def test_a_stage_move_records_history_and_wins_once(service: Running, tenant: Tenant) -> None:
    stages = (await default_pipeline(service, tenant)).stages
    first, second, won = stages[0].id, stages[1].id, stages[5].id
    deal = await create_deal(service, tenant, amount=1000)
    assert (deal.stage_id, deal.version) == (first, 1)

    moved = await _move(service, tenant, deal.id, second)
    assert moved.version == 2
    closed = await _move(service, tenant, deal.id, won)
    assert closed.forecast_category == sales_pb2.FORECAST_CATEGORY_CLOSED
    assert closed.HasField("close_time")
    assert closed.close_date
    again = await _move(service, tenant, deal.id, won)  # a retried move changes nothing
    assert again.version == closed.version == 3

    history = await service.stub.ListStageChanges(
        sales_pb2.ListStageChangesRequest(deal_id=deal.id), metadata=tenant.md()
    )
    assert [(c.from_stage_id, c.to_stage_id, c.deal_version) for c in history.stage_changes] == [
        ("", first, 1),
        (first, second, 2),
        (second, won, 3),
    ]
    assert history.stage_changes[2].actor == "rep-7"

    types = await service.outbox_types(tenant.id)
    assert types.count("crm.sales.deal.stage_changed.v1") == 2
    assert types.count("crm.sales.deal.won.v1") == 1
    [change] = [
        e["change"]
        for e in await service.outbox_events(tenant.id, "crm.sales.deal.stage_changed.v1")
        if e["change"]["to_stage_id"] == won
    ]
    assert (change["from_stage_id"], change["deal_version"]) == (second, "3")

    # Reopened and won again: a second win is a new fact, and says so once more.
    reopened = await _move(service, tenant, deal.id, second)
    assert reopened.forecast_category == sales_pb2.FORECAST_CATEGORY_PIPELINE
    assert not reopened.HasField("close_time")
    await _move(service, tenant, deal.id, won)
    assert (await service.outbox_types(tenant.id)).count("crm.sales.deal.won.v1") == 2


async def test_lost_deals_are_omitted_and_stages_belong_to_their_pipeline(
    service: Running, tenant: Tenant
) -> None:
    pipeline = await default_pipeline(service, tenant)
    lost = await create_deal(service, tenant, stage_id=pipeline.stages[6].id)
    assert lost.forecast_category == sales_pb2.FORECAST_CATEGORY_OMITTED
    assert "crm.sales.deal.lost.v1" in await service.outbox_types(tenant.id)
    other = await service.stub.CreatePipeline(
        sales_pb2.CreatePipelineRequest(
            pipeline=sales_pb2.Pipeline(
                name="Renewals",
                stages=[
                    sales_pb2.Stage(name="Open", probability=50),
                    sales_pb2.Stage(
                        name="Won", probability=100, kind=sales_pb2.STAGE_KIND_CLOSED_WON
                    ),
                    sales_pb2.Stage(name="Lost", kind=sales_pb2.STAGE_KIND_CLOSED_LOST),
                ],
            )
        ),
        metadata=tenant.md(),
    )
    err = await failure(
        create_deal(service, tenant, pipeline_id=other.id, stage_id=pipeline.stages[0].id)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    deal = await create_deal(service, tenant, pipeline_id=other.id)
    assert deal.stage_id == other.stages[0].id
    # A stage holding deals cannot go; the pipeline holding deals cannot either.
    keep = [sales_pb2.Stage(name="New open"), other.stages[1], other.stages[2]]
    err = await failure(
        service.stub.UpdatePipeline(
            sales_pb2.UpdatePipelineRequest(id=other.id, pipeline=sales_pb2.Pipeline(stages=keep)),
            metadata=tenant.md(),
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = await failure(
        service.stub.DeletePipeline(
            sales_pb2.DeletePipelineRequest(id=other.id), metadata=tenant.md()
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = await failure(
        service.stub.DeletePipeline(
            sales_pb2.DeletePipelineRequest(id=pipeline.id), metadata=tenant.md()
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # the default one


async def test_the_default_pipeline_is_made_once_under_concurrency(
    service: Running, tenant: Tenant
) -> None:
    made = await asyncio.gather(*(create_deal(service, tenant) for _ in range(5)))
    listed = await service.stub.ListPipelines(
        sales_pb2.ListPipelinesRequest(), metadata=tenant.md()
    )
    assert len(listed.pipelines) == 1
    assert {d.pipeline_id for d in made} == {listed.pipelines[0].id}
