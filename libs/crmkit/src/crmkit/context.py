"""Per-request facts carried in context variables, so logs and stores see them without plumbing."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

# What a caller's X-Request-Id may be: anything else (too long, control characters, log
# injection) is replaced by an id of our own, so it never reaches the logs.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class Identity:
    """Who is calling: verified by the gateway, carried to services in the internal token."""

    tenant_id: str
    principal: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        # Fail closed: an RPC that declares no scope is allowed to nobody. A tenant's "admin"
        # covers every scope of its own tenant, never the platform's.
        if not scope:
            return False
        if scope in self.scopes:
            return True
        return "admin" in self.scopes and not scope.startswith("platform:")


request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
identity: ContextVar[Identity | None] = ContextVar("identity", default=None)


def valid_request_id(given: str | None) -> str:
    """The caller's request id when it is a sane token, otherwise a new one."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def caller() -> Identity:
    """Who is calling, its tenant id in canonical form (the chassis interceptor checked it)."""
    ident = identity.get()
    if ident is None:  # the interceptor sets it before any handler runs
        raise LookupError("no identity in context")
    return ident
