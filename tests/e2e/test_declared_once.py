"""A service is declared once: a throwaway `echo` service — a proto, a module, one declaration
entry — is started by devstack, published by the gateway (REST, OpenAPI, gRPC health, scopes)
and recorded idempotently by the chassis, with no edit anywhere else."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from tests.helpers import Platform, all_scopes
from trellis_devstack import declaration
from trellis_devstack.declaration import ServiceDecl
from trellis_devstack.infra import Nats, Postgres
from trellis_devstack.probes import health_status
from trellis_devstack.stack import Stack

ROOT = Path(__file__).resolve().parents[2]

ECHO_PROTO = """
syntax = "proto3";

package crm.echo.v1;

import "crm/common/v1/options.proto";
import "google/api/annotations.proto";

// Says back what it is told.
service EchoService {
  // Records an echo.
  rpc CreateEcho(CreateEchoRequest) returns (Echo) {
    option (google.api.http) = {
      post: "/v1/echoes"
      body: "echo"
    };
    option (crm.common.v1.required_scope) = "echo:write";
  }
}

// What was said, and to whom.
message Echo {
  string id = 1;
  string text = 2 [(crm.common.v1.max_length) = 100];
  string tenant_id = 3;
}

// Request of CreateEcho.
message CreateEchoRequest {
  Echo echo = 1;
}
"""

# The whole service: settings, a servicer with its use case, the definition, the entry point.
ECHO_MAIN = """
from pydantic_settings import SettingsConfigDict

from crm.echo.v1 import echo_pb2, echo_pb2_grpc
from crmkit.cli import main
from crmkit.config import ServiceSettings
from crmkit.context import caller
from crmkit.ids import new_id
from crmkit.migrations import migrations_dir
from crmkit.service import ServiceDefinition


class EchoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore", frozen=True)


class EchoApi(echo_pb2_grpc.EchoServiceServicer):
    async def CreateEcho(self, request, context):
        return echo_pb2.Echo(id=new_id(), text=request.echo.text, tenant_id=caller().tenant_id)


async def wire(runtime):
    echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoApi(), runtime.server)
    return []


DEFINITION = ServiceDefinition(
    name="echo",
    migrations_dir=migrations_dir(__file__),
    grpc_services=["crm.echo.v1.EchoService"],
    wire=wire,
    uses_bus=False,
)
main(DEFINITION, EchoSettings)
"""


def _build_echo(root: Path) -> Path:
    """The throwaway service's generated code and package, on a path of its own."""
    protos, gen = root / "protos", root / "gen"
    (protos / "crm" / "echo" / "v1").mkdir(parents=True)
    (protos / "crm" / "echo" / "v1" / "echo.proto").write_text(ECHO_PROTO)
    gen.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{protos}",
            f"-I{ROOT / 'protos'}",
            f"-I{ROOT / 'third_party' / 'googleapis'}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            "crm/echo/v1/echo.proto",
        ],
        check=True,
    )
    package = gen / "trellis_echo"
    (package / "migrations").mkdir(parents=True)  # the chassis tables are all it needs
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(ECHO_MAIN))
    return gen


@pytest.fixture(scope="module")
def echo_platform(
    postgres: Postgres, nats_server: Nats, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    gen = _build_echo(tmp_path_factory.mktemp("echo"))
    # This process too: the tests derive scopes from the echo contract as devstack does.
    sys.path.insert(0, str(gen))
    importlib.invalidate_caches()
    decl = declaration.load().with_service(
        ServiceDecl(
            name="echo", ports={"grpc": 50051, "metrics": 9090}, callers=("gateway",), database=True
        )
    )
    stack = Stack.ephemeral(
        postgres,
        nats_server.url,
        db_prefix=f"echo_{uuid.uuid4().hex[:6]}_",
        decl=decl,
        extra_env={"PYTHONPATH": str(gen)},
    )
    running = Platform(stack, tmp_path_factory.mktemp("echo-logs"))
    running.start_all()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop_all()
        sys.path.remove(str(gen))


async def test_the_gateway_publishes_a_service_declared_once(echo_platform: Platform) -> None:
    stack = echo_platform.stack
    assert stack.services.index("echo") < stack.services.index("gateway")
    scopes = all_scopes(echo_platform)
    assert {"echo:write", "contacts:read", "admin"} <= set(scopes)
    tenant_id, key = stack.create_tenant("echo tenant", ["echo:write"])
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as api:
        sent = {"text": "hello"}
        first = await api.post("/v1/echoes", json=sent, headers={"Idempotency-Key": "e-1"})
        assert first.status_code == 201, first.text
        assert (first.json()["text"], first.json()["tenant_id"]) == ("hello", tenant_id)
        again = await api.post("/v1/echoes", json=sent, headers={"Idempotency-Key": "e-1"})
        assert again.json()["id"] == first.json()["id"]
        too_long = await api.post("/v1/echoes", json={"text": "x" * 101})
        assert too_long.status_code == 400
        assert too_long.json()["errors"][0]["field"] == "echo.text"
        # The key holds echo:write only: the contacts API stays closed to it.
        assert (await api.get("/v1/contacts")).status_code == 403
        document = (await api.get("/v1/openapi.json")).json()
        assert "/v1/echoes" in document["paths"]

    async with grpc.aio.insecure_channel(stack.grpc_address("gateway")) as channel:
        status = await health_status(channel, "crm.echo.v1.EchoService")
    assert status == health_pb2.HealthCheckResponse.SERVING
