"""API keys: `trellis_<id>_<secret>`, the secret stored as a SHA-256 hash.

The prefix makes a leaked key recognisable to secret scanners; the id finds the row without
scanning; the secret is 32 random bytes, so a fast hash is enough (no password stretching
needed for high-entropy secrets). Verified keys are cached briefly; a revocation clears the
local cache at once and other replicas within the cache period.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from crmkit.context import Identity
from crmkit.db import Pool

PREFIX = "trellis_"
_KEY_RE = re.compile(r"^trellis_([a-z0-9]{16})_([A-Za-z0-9_-]{43})$")
PLATFORM_TENANT = "00000000-0000-0000-0000-000000000000"


def generate() -> tuple[str, str, bytes]:
    """A new key: (id, full secret to show once, hash to store)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}{key_id}_{secret}", hash_secret(secret)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class _Cached:
    identity: Identity | None
    secret_hash: bytes
    at: float


class KeyVerifier:
    def __init__(self, pool: Pool, bootstrap_key: str | None, ttl: float) -> None:
        self._pool = pool
        self._bootstrap = bootstrap_key
        self._ttl = ttl
        self._cache: dict[str, _Cached] = {}

    async def verify_authorization(self, header: str) -> Identity | None:
        """The identity behind an `Authorization: Bearer <key>` value (HTTP header or gRPC
        metadata); None when it is missing, malformed, unknown or revoked."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return await self.verify(token.strip())

    async def verify(self, presented: str) -> Identity | None:
        """The identity of a valid, unrevoked key; None otherwise."""
        if self._bootstrap and hmac.compare_digest(presented, self._bootstrap):
            return Identity(PLATFORM_TENANT, "bootstrap", frozenset({"platform:admin", "admin"}))
        match = _KEY_RE.match(presented)
        if match is None:
            return None
        key_id, secret = match.groups()
        cached = self._cache.get(key_id)
        if cached is None or time.monotonic() - cached.at > self._ttl:
            cached = await self._load(key_id)
        if not hmac.compare_digest(cached.secret_hash, hash_secret(secret)):
            return None
        return cached.identity

    async def _load(self, key_id: str) -> _Cached:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT tenant_id::text, scopes, secret_hash, revoke_time IS NOT NULL AS revoked"
                " FROM api_keys WHERE id = %s",
                (key_id,),
            )
            row = await cur.fetchone()
        if row is None:
            entry = _Cached(None, b"", time.monotonic())
        else:
            ident = (
                None
                if row["revoked"]
                else Identity(row["tenant_id"], f"key:{key_id}", frozenset(row["scopes"]))
            )
            entry = _Cached(ident, bytes(row["secret_hash"]), time.monotonic())
        self._cache[key_id] = entry
        return entry

    def forget(self, key_id: str) -> None:
        self._cache.pop(key_id, None)
