"""The notify service's settings: NOTIFY_* variables plus the platform-wide ones."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from crmkit.config import ServiceSettings

# About three days in all (75.6 h), growing from seconds to a day.
DEFAULT_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


class NotifySettings(ServiceSettings):
    """NOTIFY_DATABASE_URL, NOTIFY_GRPC_PORT, ... (see ServiceSettings), and the webhook ones."""

    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore", frozen=True)

    webhook_allow_private: bool = Field(
        default=False,
        description="deliver to loopback, private and link-local addresses and over plain "
        "http (development and tests only)",
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # NoDecode: the variable is a comma-separated list, not JSON.
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_RETRY_SCHEDULE,
        description="seconds before each retry (comma-separated); the attempt after the last "
        "one is the last",
    )
    webhook_retry_jitter: float = Field(
        default=0.1, ge=0, lt=1, description="each delay varies by up to this share, both ways"
    )
    webhook_concurrency: int = Field(default=64, ge=1, le=1000)
    webhook_per_endpoint_concurrency: int = Field(default=8, ge=1, le=100)
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    webhook_secret_overlap_hours: float = Field(
        default=24, gt=0, le=24 * 30, description="how long a rotated-out secret still signs"
    )
    replay_max_events: int = Field(default=10_000, ge=1, le=1_000_000)

    http_port: int = Field(
        default=8080, ge=0, le=65535, description="the public port of the unsubscribe links"
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="where the public port is reached from outside, for the unsubscribe links "
        "(default http://<bind host>:<http port>)",
    )
    unsubscribe_key: SecretStr = Field(
        min_length=32, description="HMAC key of the unsubscribe links, from a Secret"
    )
    smtp_server: str = Field(
        default="127.0.0.1:25",
        pattern=r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$",
        description="host:port of the SMTP relay",
    )
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "starttls"
    smtp_timeout_seconds: float = Field(default=30, gt=0, le=300)
    mail_from: str = Field(default="Trellis <notifications@trellis.invalid>", min_length=3)
    mail_retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        default=(60, 300, 1800, 7200, 21600),
        description="seconds before each retry of a temporary SMTP failure (comma-separated)",
    )
    mail_concurrency: int = Field(default=8, ge=1, le=200)
    campaign_tick_seconds: float = Field(default=1.0, gt=0, le=60)
    contacts_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @field_validator("public_url", mode="before")
    @classmethod
    def _unset(cls, value: object) -> object:
        return value or None  # an empty variable (devstack's) means the default

    def smtp_address(self) -> tuple[str, int]:
        host, _, port = self.smtp_server.rpartition(":")
        return host, int(port)

    def public_base_url(self) -> str:
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.bind_host in ("0.0.0.0", "") else self.bind_host  # noqa: S104
        return f"http://{host}:{self.http_port}"

    @field_validator("webhook_retry_schedule", "mail_retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(float(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_retry_schedule", "mail_retry_schedule")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(delay <= 0 for delay in value):
            raise ValueError("needs one or more delays, each above 0 seconds")
        return value
