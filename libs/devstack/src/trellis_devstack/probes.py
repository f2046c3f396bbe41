"""Health probes over gRPC, for whatever waits on a service: the runner, tests, benchmarks."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    """grpc.health.v1 Check, called by path: the typeshed stub of HealthStub has no methods."""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    answer: health_pb2.HealthCheckResponse = await check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return answer.status


async def wait_for_health(channel: grpc.aio.Channel, wanted: int, seconds: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            if await health_status(channel) == wanted:
                return
        except grpc.aio.AioRpcError:
            pass  # not listening yet
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"health did not become {wanted} in {seconds} s")
        await asyncio.sleep(0.1)
