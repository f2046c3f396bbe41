"""Typed settings from the environment, validated at start with a clear message."""

from __future__ import annotations

import os
import sys
from typing import TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every service has.

    Service-specific variables carry the service's prefix (CONTACTS_DATABASE_URL); the ones the
    whole platform shares (NATS_URL, INTERNAL_TOKEN_SECRET, OTEL_*) have fixed names.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str = Field(description="PostgreSQL URL of the service's app (non-owner) role")
    migration_database_url: str | None = Field(
        default=None, description="PostgreSQL URL of the owner role, for `migrate` only"
    )
    app_db_role: str | None = Field(
        default=None,
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="role `migrate` grants table access to (the role of database_url)",
    )
    bind_host: str = "0.0.0.0"  # noqa: S104 - in a pod the service must be reachable
    grpc_port: int = Field(default=50051, ge=1, le=65535)
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    db_pool_min: int = Field(default=2, ge=1, le=100)
    db_pool_max: int = Field(default=10, ge=1, le=500)
    shutdown_grace_seconds: float = Field(default=20.0, gt=0, le=300)

    nats_url: str = Field(
        default="nats://127.0.0.1:4222", validation_alias=AliasChoices("NATS_URL")
    )
    nats_stream_replicas: int = Field(
        default=1, ge=1, le=5, validation_alias=AliasChoices("NATS_STREAM_REPLICAS")
    )
    nats_stream_max_age_days: float = Field(
        default=30,
        gt=0,
        validation_alias=AliasChoices("NATS_STREAM_MAX_AGE_DAYS"),
        description="how long events stay in CRM_EVENTS (and dead letters in CRM_DLQ) to replay",
    )
    internal_token_secret: SecretStr = Field(
        min_length=32,
        validation_alias=AliasChoices("INTERNAL_TOKEN_SECRET"),
        description="shared HMAC secret of the gateway's signed identity tokens",
    )
    otlp_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    log_level: str = Field(
        default="INFO",
        pattern=r"^(DEBUG|INFO|WARNING|ERROR)$",
        validation_alias=AliasChoices("LOG_LEVEL"),
    )

    def callees(self) -> dict[str, str]:
        """host:port of each service this one calls, by name, from `<PREFIX><CALLEE>_ADDR`
        (the chart and devstack set one per edge of the declared call graph)."""
        prefix = str(self.model_config.get("env_prefix", "")).upper()
        return {
            name[len(prefix) : -len("_ADDR")].lower(): value
            for name, value in os.environ.items()
            if name.startswith(prefix) and name.endswith("_ADDR") and len(name) > len(prefix) + 5
        }


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Build settings from the environment, or exit with one line per bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = [f"configuration error in {cls.__name__}:"]
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            field = cls.model_fields.get(name)
            # Platform-wide settings are reported under their alias, which is the env name.
            env = f"{prefix}{name}".upper() if field is not None else name
            lines.append(f"  {env}: {err['msg']}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
