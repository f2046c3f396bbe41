"""The contacts service's settings: CONTACTS_* variables plus the platform-wide ones."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from crmkit.config import ServiceSettings


class ContactsSettings(ServiceSettings):
    """CONTACTS_DATABASE_URL, CONTACTS_GRPC_PORT, ... (see ServiceSettings for the fields)."""

    model_config = SettingsConfigDict(env_prefix="CONTACTS_", extra="ignore", frozen=True)
