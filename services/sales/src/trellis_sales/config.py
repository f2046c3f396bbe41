"""The sales service's settings: SALES_* variables plus the platform-wide ones."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from crmkit.config import ServiceSettings


class SalesSettings(ServiceSettings):
    """SALES_DATABASE_URL, SALES_GRPC_PORT, ... (see ServiceSettings), and SALES_CONTACTS_ADDR
    (set by the chart and devstack from the declared call graph; see `callees()`)."""

    model_config = SettingsConfigDict(env_prefix="SALES_", extra="ignore", frozen=True)

    contacts_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="deadline of each call to the contacts service"
    )
    engagement_subjects: str = Field(
        default="crm.events.*.support.ticket.>",
        description="comma-separated NATS subjects whose events engagement rules may count,"
        " besides the contacts events sales consumes anyway",
    )
    rescore_interval_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="how often decayed lead scores are re-computed"
    )

    @field_validator("engagement_subjects")
    @classmethod
    def _subjects(cls, value: str) -> str:
        for subject in value.split(","):
            if not subject.strip().startswith("crm.events."):
                raise ValueError(f"{subject.strip()!r} is not a crm.events.> subject")
        return value

    def engagement_subject_list(self) -> list[str]:
        return [s.strip() for s in self.engagement_subjects.split(",")]
