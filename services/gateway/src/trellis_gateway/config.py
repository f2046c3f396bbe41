"""Gateway settings: GATEWAY_* variables beside the platform-wide ones."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from crmkit.config import ServiceSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# What a lease adds to the backend deadline: a claim outlives the call it covers, so a slow
# first attempt is never overtaken by its own retry while it can still commit.
_LEASE_MARGIN_SECONDS = 5.0


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    http_port: int = Field(default=8080, ge=1, le=65535)
    grpc_port: int = Field(default=50050, ge=1, le=65535)
    backend_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    bootstrap_admin_key: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="the platform operator's key (scope platform:admin), from a Secret",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=16 * 1_048_576)
    max_header_bytes: int = Field(
        default=32_768, ge=4096, le=1_048_576, description="largest request head (431 beyond)"
    )
    max_headers: int = Field(default=100, ge=16, le=1000, description="most request headers")
    keep_alive_seconds: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="how long an idle client connection stays open: longer than the idle"
        " timeout of the client or load balancer in front (often 60 s), so they close it first"
        " and never send a request on a connection the gateway is closing",
    )
    rate_limit_key_per_second: float = Field(default=50.0, gt=0)
    rate_limit_key_burst: int = Field(default=100, ge=1)
    rate_limit_tenant_per_second: float = Field(default=200.0, gt=0)
    rate_limit_tenant_burst: int = Field(default=400, ge=1)
    rate_limit_address_per_second: float = Field(
        default=10.0, gt=0, description="failed authentications a client address may make"
    )
    rate_limit_address_burst: int = Field(default=50, ge=1)
    trusted_proxies: Annotated[tuple[Network, ...], NoDecode] = Field(
        default=(),
        description="CIDRs of the proxies whose X-Forwarded-For names the client (comma-separated)",
    )
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    api_key_cache_size: int = Field(
        default=10_000, ge=1, le=1_000_000, description="most known and most unknown key ids kept"
    )
    idempotency_ttl_hours: int = Field(default=24, ge=1, le=24 * 7)
    idempotency_lease_seconds: float | None = Field(
        default=None,
        gt=0,
        le=600,
        description="how long a running request holds its Idempotency-Key (default: backend"
        f" timeout + {_LEASE_MARGIN_SECONDS:g} s)",
    )

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        networks = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or CIDR") from None
        return tuple(networks)

    @field_validator("idempotency_lease_seconds")
    @classmethod
    def _lease_outlives_backend_calls(cls, value: float | None, info: ValidationInfo) -> float:
        timeout: float = info.data.get("backend_timeout_seconds", 10.0)
        if value is None:
            return timeout + _LEASE_MARGIN_SECONDS
        if value <= timeout:
            raise ValueError(f"must exceed the backend timeout ({timeout:g} s)")
        return value

    @property
    def lease_seconds(self) -> float:
        assert self.idempotency_lease_seconds is not None  # the validator fills the default
        return self.idempotency_lease_seconds
