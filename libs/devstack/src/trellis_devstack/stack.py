"""The platform's processes on one machine: databases, environment, migrations, services.

`make run` and the end-to-end tests both build on this, so what the tests exercise is what a
newcomer runs.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

from trellis_devstack.infra import Postgres, free_port

SERVICES = ("contacts", "gateway")  # start order: the gateway calls contacts


@dataclass
class Ports:
    gateway_http: int
    gateway_grpc: int
    grpc: dict[str, int]
    metrics: dict[str, int]

    @classmethod
    def fixed(cls) -> Ports:
        return cls(8080, 50050, {"contacts": 50051}, {"gateway": 9100, "contacts": 9101})

    @classmethod
    def free(cls) -> Ports:
        return cls(
            free_port(),
            free_port(),
            {"contacts": free_port()},
            {name: free_port() for name in SERVICES},
        )


@dataclass
class Stack:
    postgres: Postgres
    nats_url: str
    ports: Ports
    internal_token_secret: str
    bootstrap_key: str
    db_prefix: str = ""
    urls: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (owner, app)

    @classmethod
    def ephemeral(cls, postgres: Postgres, nats_url: str, db_prefix: str = "") -> Stack:
        """A provisioned and migrated stack on free ports with fresh secrets (tests, benchmarks)."""
        stack = cls(
            postgres=postgres,
            nats_url=nats_url,
            ports=Ports.free(),
            internal_token_secret=secrets.token_urlsafe(48),
            bootstrap_key=secrets.token_urlsafe(48),
            db_prefix=db_prefix,
        )
        stack.provision()
        stack.migrate()
        return stack

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway_http}"

    def provision(self) -> None:
        """One database per service, owned by one role and used by another (for RLS)."""
        for name in SERVICES:
            env_url = os.environ.get(f"{name.upper()}_DATABASE_URL")
            if env_url:  # real infrastructure: the operator's URLs, used as given
                self.urls[name] = (
                    os.environ.get(f"{name.upper()}_MIGRATION_DATABASE_URL", env_url),
                    env_url,
                )
            else:
                self.urls[name] = self.postgres.create_database(f"{self.db_prefix}{name}")

    def env(self, name: str) -> dict[str, str]:
        prefix = name.upper()
        owner, app = self.urls[name]
        env = {
            **os.environ,
            "NATS_URL": self.nats_url,
            "INTERNAL_TOKEN_SECRET": self.internal_token_secret,
            f"{prefix}_DATABASE_URL": app,
            f"{prefix}_MIGRATION_DATABASE_URL": owner,
            f"{prefix}_APP_DB_ROLE": app.split("://", 1)[1].split(":", 1)[0],
            f"{prefix}_BIND_HOST": "127.0.0.1",
            f"{prefix}_METRICS_PORT": str(self.ports.metrics[name]),
            f"{prefix}_SHUTDOWN_GRACE_SECONDS": "10",
            "PYTHONUNBUFFERED": "1",
        }
        if name == "gateway":
            env |= {
                "GATEWAY_HTTP_PORT": str(self.ports.gateway_http),
                "GATEWAY_GRPC_PORT": str(self.ports.gateway_grpc),
                "GATEWAY_CONTACTS_ADDR": f"127.0.0.1:{self.ports.grpc['contacts']}",
                "GATEWAY_BOOTSTRAP_ADMIN_KEY": self.bootstrap_key,
            }
        else:
            env[f"{prefix}_GRPC_PORT"] = str(self.ports.grpc[name])
        return env

    def command(self, name: str, verb: str) -> list[str]:
        return [sys.executable, "-m", f"trellis_{name}", verb]

    def migrate(self) -> None:
        for name in SERVICES:
            subprocess.run(self.command(name, "migrate"), env=self.env(name), check=True)  # noqa: S603

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.gateway_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the gateway was not ready within {timeout} s")

    def create_tenant(self, name: str, scopes: list[str]) -> tuple[str, str]:
        """A tenant and an API key for it: (tenant id, key secret)."""
        admin = {"Authorization": f"Bearer {self.bootstrap_key}"}
        with httpx.Client(base_url=self.gateway_url, headers=admin, timeout=10) as client:
            tenant = client.post("/v1/tenants", json={"name": name})
            tenant.raise_for_status()
            tenant_id = tenant.json()["id"]
            key = client.post(
                "/v1/api-keys",
                json={"tenant_id": tenant_id, "name": f"{name} key", "scopes": scopes},
            )
            key.raise_for_status()
        return tenant_id, key.json()["secret"]
