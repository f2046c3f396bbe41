"""The platform's processes on one machine: databases, environment, migrations, services.

`make run` and the end-to-end tests both build on this, so what the tests exercise is what a
newcomer runs. Which services exist, their ports and who calls whom come from the one
declaration (declaration.py); nothing here names a service but the gateway, the front door.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from crmkit import auth
from crmkit.context import Identity
from trellis_devstack import declaration
from trellis_devstack.declaration import GATEWAY, Declaration
from trellis_devstack.infra import Postgres, free_port

Ports = dict[str, dict[str, int]]  # service -> port name -> port on 127.0.0.1

_LOCAL_METRICS_BASE = 9100
_PRIVATE_KEY, _KEY_ID = "INTERNAL_TOKEN_PRIVATE_KEY", "INTERNAL_TOKEN_KEY_ID"


def fixed_ports(decl: Declaration) -> Ports:
    """The ports `make run` uses, the same on every run: the gateway's as declared (8080,
    50050), every other service its declared port plus its place in the start order (so
    several can share one machine), metrics from 9100."""
    ports: Ports = {}
    for i, name in enumerate(decl.start_order()):
        offset = 0 if name == GATEWAY else i
        ports[name] = {
            p: (_LOCAL_METRICS_BASE + i if p == "metrics" else number + offset)
            for p, number in decl.services[name].ports.items()
        }
    return ports


def free_ports(decl: Declaration) -> Ports:
    return {name: {p: free_port() for p in s.ports} for name, s in decl.services.items()}


@dataclass
class Stack:
    postgres: Postgres
    nats_url: str
    ports: Ports
    # Values of the chart's `secrets` entries, by entry name (internalToken, ...).
    secrets: dict[str, str]
    decl: Declaration = field(default_factory=declaration.load)
    db_prefix: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)  # for every service
    urls: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (owner, app)

    @classmethod
    def ephemeral(
        cls,
        postgres: Postgres,
        nats_url: str,
        db_prefix: str = "",
        decl: Declaration | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Stack:
        """A provisioned and migrated stack on free ports with fresh secrets (tests, benchmarks)."""
        decl = decl or declaration.load()
        stack = cls(
            postgres=postgres,
            nats_url=nats_url,
            ports=free_ports(decl),
            secrets=new_secrets(),
            decl=decl,
            db_prefix=db_prefix,
            extra_env=dict(extra_env or {}),
        )
        stack.provision()
        stack.migrate()
        return stack

    @property
    def services(self) -> list[str]:
        return self.decl.start_order()

    def signing_keys(self) -> dict[str, auth.SigningKey]:
        """The identity-token keys of the services that sign (the gateway, and services that
        act as themselves, such as notify), by service."""
        found = {}
        for name, svc in self.decl.services.items():
            entry = svc.secret_env.get(_PRIVATE_KEY)
            if entry is not None:
                found[name] = auth.SigningKey.from_pem(svc.env[_KEY_ID], self.secrets[entry])
        return found

    def public_keys(self) -> str:
        """INTERNAL_TOKEN_PUBLIC_KEYS: the JWKS of every signing key (the chart's
        internalToken.publicKeys); a service's own key lists its declared tokenScopes."""
        return auth.jwks(
            *(
                key.public_jwk(
                    list(scopes) if (scopes := self.decl.services[name].token_scopes) else None
                )
                for name, key in self.signing_keys().items()
            )
        )

    def mint(self, ident: Identity) -> str:
        """An identity token as the gateway would send it, for as long as services accept one
        (tests and benchmarks call services directly with it)."""
        return auth.mint(ident, self.signing_keys()[GATEWAY], auth.MAX_LIFETIME_SECONDS)

    @property
    def bootstrap_key(self) -> str:
        return self.secrets["bootstrapAdminKey"]

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[GATEWAY]['http']}"

    def grpc_address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]['grpc']}"

    def provision(self) -> None:
        """One database per service, owned by one role and used by another (for RLS)."""
        for name in self.services:
            if not self.decl.services[name].database:
                continue
            env_url = os.environ.get(f"{self.decl.services[name].prefix}_DATABASE_URL")
            if env_url:  # real infrastructure: the operator's URLs, used as given
                migration = f"{self.decl.services[name].prefix}_MIGRATION_DATABASE_URL"
                self.urls[name] = (os.environ.get(migration, env_url), env_url)
            else:
                self.urls[name] = self.postgres.create_database(f"{self.db_prefix}{name}")

    def env(self, name: str) -> dict[str, str]:
        """The service's environment, as the chart would set it."""
        svc = self.decl.services[name]
        prefix = svc.prefix
        env = {
            **os.environ,
            **self.extra_env,
            "NATS_URL": self.nats_url,
            "INTERNAL_TOKEN_PUBLIC_KEYS": self.public_keys(),
            f"{prefix}_BIND_HOST": "127.0.0.1",
            f"{prefix}_SHUTDOWN_GRACE_SECONDS": "10",
            "PYTHONUNBUFFERED": "1",
        }
        env |= svc.env | svc.development_env
        for port, number in self.ports[name].items():
            env[f"{prefix}_{port.upper()}_PORT"] = str(number)
        for callee in self.decl.callees(name):
            env[f"{prefix}_{self.decl.services[callee].prefix}_ADDR"] = self.grpc_address(callee)
        for variable, entry in svc.secret_env.items():
            env[variable] = self.secrets[entry]
        if name in self.urls:
            owner, app = self.urls[name]
            env |= {
                f"{prefix}_DATABASE_URL": app,
                f"{prefix}_MIGRATION_DATABASE_URL": owner,
                f"{prefix}_APP_DB_ROLE": app.split("://", 1)[1].split(":", 1)[0],
            }
        return env

    def command(self, name: str, verb: str) -> list[str]:
        return [sys.executable, "-m", f"trellis_{name}", verb]

    def migrate(self) -> None:
        for name in self.services:
            if name in self.urls:
                subprocess.run(self.command(name, "migrate"), env=self.env(name), check=True)  # noqa: S603

    def wait_ready(self, timeout: float = 120, alive: Callable[[], None] = lambda: None) -> None:
        """Until the gateway is ready and sees every backend serving (the gateway stays ready
        while a backend is down, so its readiness alone says nothing about the backends).
        `alive` is called between polls: it raises when waiting longer is pointless."""
        # Generous: every service starts at once, and a shared machine may be busy.
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            alive()
            try:
                answer = httpx.get(f"{self.gateway_url}/readyz", timeout=1)
                last = f"{answer.status_code} {answer.text}"
                backends = answer.json().get("backends", {})
                if answer.status_code == 200 and all(
                    backends.get(name) == "SERVING" for name in self.decl.backends()
                ):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the platform was not ready within {timeout} s; /readyz: {last}")

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


def new_secrets() -> dict[str, str]:
    """Fresh values for every secret the chart declares a service may need."""
    return {
        "internalTokenSigningKey": auth.SigningKey.generate("local").pem(),
        "bootstrapAdminKey": secrets.token_urlsafe(48),
        "notifyUnsubscribeKey": secrets.token_urlsafe(48),
        "notifyTokenSigningKey": auth.SigningKey.generate("local").pem(),
    }
