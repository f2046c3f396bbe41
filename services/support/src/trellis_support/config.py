"""The support service's settings: SUPPORT_* variables plus the platform-wide ones."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from crmkit.config import ServiceSettings


class SupportSettings(ServiceSettings):
    """SUPPORT_DATABASE_URL, SUPPORT_GRPC_PORT, ... (see ServiceSettings), and:"""

    model_config = SettingsConfigDict(env_prefix="SUPPORT_", extra="ignore", frozen=True)

    contacts_addr: str = Field(
        min_length=1,
        description="host:port of the contacts service (the chart and devstack set it from "
        "the declared call graph)",
    )
    contacts_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    reopen_window_days: float = Field(
        default=7.0,
        gt=0,
        le=365,
        description="how long after being solved a customer's reply reopens a ticket",
    )
    sla_check_interval_seconds: float = Field(
        default=1.0,
        ge=0.01,
        le=60,
        description="how often each replica looks for SLA warnings and breaches that fell due",
    )
