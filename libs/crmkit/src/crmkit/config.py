"""Typed settings from the environment, validated at start with a clear message."""

from __future__ import annotations

import os
import sys
from typing import Literal, TypeVar

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from crmkit import auth


class TracingSettings(BaseSettings):
    """The standard OpenTelemetry exporter variables, checked at start (the SDK and the OTLP
    exporters read them again themselves)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    traces_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    any_protocol: Literal["grpc", "http/protobuf"] = Field(
        default="grpc", validation_alias="OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    traces_protocol: Literal["grpc", "http/protobuf"] | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    )

    @property
    def exporting(self) -> bool:
        return bool(self.endpoint or self.traces_endpoint)

    @property
    def protocol(self) -> str:
        return self.traces_protocol or self.any_protocol


class ServiceSettings(BaseSettings):
    """Settings every service has.

    Service-specific variables carry the service's prefix (CONTACTS_DATABASE_URL); the ones the
    whole platform shares (NATS_URL, INTERNAL_TOKEN_*, OTEL_*) have fixed names.
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
    internal_token_public_keys: str = Field(
        validation_alias=AliasChoices("INTERNAL_TOKEN_PUBLIC_KEYS"),
        description="JWKS (JSON) of the Ed25519 keys whose identity tokens this service trusts",
    )
    internal_token_private_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("INTERNAL_TOKEN_PRIVATE_KEY"),
        description="PEM Ed25519 key this process signs identity tokens with (the gateway's, "
        "or a service's own), from a Secret",
    )
    internal_token_key_id: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9]*-[A-Za-z0-9_.-]{1,64}$",
        validation_alias=AliasChoices("INTERNAL_TOKEN_KEY_ID"),
        description="the signing key's id, <issuer>-<version> (e.g. gateway-1)",
    )
    tracing: TracingSettings = Field(default_factory=lambda: TracingSettings())
    log_level: str = Field(
        default="INFO",
        pattern=r"^(DEBUG|INFO|WARNING|ERROR)$",
        validation_alias=AliasChoices("LOG_LEVEL"),
    )

    @field_validator("internal_token_public_keys")
    @classmethod
    def _jwks(cls, value: str) -> str:
        auth.load_jwks(value)  # ValueError names what is wrong
        return value

    @model_validator(mode="after")
    def _signing_key(self) -> ServiceSettings:
        if (self.internal_token_private_key is None) != (self.internal_token_key_id is None):
            raise ValueError("INTERNAL_TOKEN_PRIVATE_KEY and INTERNAL_TOKEN_KEY_ID go together")
        self.signing_key()  # a key that does not load fails here, at start
        return self

    def trusted_keys(self) -> dict[str, auth.TrustedKey]:
        return auth.load_jwks(self.internal_token_public_keys)

    def signing_key(self) -> auth.SigningKey | None:
        if self.internal_token_private_key is None or self.internal_token_key_id is None:
            return None
        try:
            return auth.SigningKey.from_pem(
                self.internal_token_key_id, self.internal_token_private_key.get_secret_value()
            )
        except (ValueError, TypeError):
            raise ValueError(
                "INTERNAL_TOKEN_PRIVATE_KEY is not a PEM Ed25519 private key"
            ) from None

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
            if not err["loc"]:  # a rule over several variables names them itself
                lines.append(f"  {err['msg']}")
                continue
            name = str(err["loc"][0])
            field = cls.model_fields.get(name)
            # Platform-wide settings are reported under their alias, which is the env name.
            env = f"{prefix}{name}".upper() if field is not None else name
            lines.append(f"  {env}: {err['msg']}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
