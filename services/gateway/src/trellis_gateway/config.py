"""Gateway settings: GATEWAY_* variables beside the platform-wide ones."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from crmkit.config import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    http_port: int = Field(default=8080, ge=1, le=65535)
    grpc_port: int = Field(default=50050, ge=1, le=65535)
    backend_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    bootstrap_admin_key: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="a platform-operator key (scopes platform:admin and admin), from a Secret",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=16 * 1_048_576)
    rate_limit_key_per_second: float = Field(default=50.0, gt=0)
    rate_limit_key_burst: int = Field(default=100, ge=1)
    rate_limit_tenant_per_second: float = Field(default=200.0, gt=0)
    rate_limit_tenant_burst: int = Field(default=400, ge=1)
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    idempotency_ttl_hours: int = Field(default=24, ge=1, le=24 * 7)
