"""Per-request facts carried in context variables, so logs and stores see them without plumbing."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    """Who is calling: verified by the gateway, carried to services in the internal token."""

    tenant_id: str
    principal: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        # A tenant's "admin" covers every scope of its own tenant, never the platform's.
        if not scope or scope in self.scopes:
            return True
        return "admin" in self.scopes and not scope.startswith("platform:")


request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
identity: ContextVar[Identity | None] = ContextVar("identity", default=None)


def current_identity() -> Identity:
    ident = identity.get()
    if ident is None:  # the auth interceptor sets it before any handler runs
        raise LookupError("no identity in context")
    return ident
