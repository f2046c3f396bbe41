"""What end-to-end tests share: the platform's processes and tenants with API keys."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx

from crmkit import contract
from trellis_devstack.processes import ServiceProcesses

# Low per-key limits so a test can exhaust one; each test gets its own key, so they don't
# starve one another. The tenant limit stays out of the way.
LIMITS = {
    "GATEWAY_RATE_LIMIT_KEY_PER_SECOND": "20",
    "GATEWAY_RATE_LIMIT_KEY_BURST": "40",
    "GATEWAY_RATE_LIMIT_TENANT_PER_SECOND": "5000",
    "GATEWAY_RATE_LIMIT_TENANT_BURST": "10000",
    "GATEWAY_API_KEY_CACHE_SECONDS": "5",
}


class Platform(ServiceProcesses):
    """The services under test, with rate limits low enough for a test to exhaust."""

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        super().start(name, {**LIMITS, **(extra_env or {})})


@dataclass(frozen=True)
class Tenant:
    id: str
    key: str
    gateway_url: str

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.gateway_url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=30,
        )


def all_scopes(platform: Platform) -> list[str]:
    """Every scope a tenant's key can be granted on the platform under test."""
    published = [
        s for name in platform.stack.decl.backends() for s in contract.services_of_domain(name)
    ]
    return sorted(contract.grantable_scopes(published))


def new_tenant(platform: Platform, scopes: list[str] | None = None) -> Tenant:
    tenant_id, key = platform.stack.create_tenant(
        f"tenant-{uuid.uuid4().hex[:6]}", scopes or all_scopes(platform)
    )
    return Tenant(tenant_id, key, platform.stack.gateway_url)
