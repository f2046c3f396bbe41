"""API keys: `trellis_<id>_<secret>`, the secret stored as a SHA-256 hash.

The prefix makes a leaked key recognisable to secret scanners; the id finds the row without
scanning; the secret is 32 random bytes, so a fast hash is enough (no password stretching
needed for high-entropy secrets). Looked-up key ids are cached briefly, found and unknown ones
apart and each bounded, so a flood of made-up ids neither grows memory nor pushes the real
keys out; a revocation clears the local cache at once and other replicas within the TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from crmkit.context import Identity
from crmkit.db import Pool

PREFIX = "trellis_"
_KEY_RE = re.compile(r"trellis_([a-z0-9]{16})_([A-Za-z0-9_-]{43})")
PLATFORM_TENANT = "00000000-0000-0000-0000-000000000000"
PLATFORM_ADMIN = "platform:admin"
TENANT_ADMIN = "admin"

V = TypeVar("V")


def generate() -> tuple[str, str, bytes]:
    """A new key: (id, full secret to show once, hash to store)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}{key_id}_{secret}", hash_secret(secret)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class PlatformOperator(Identity):
    """The bootstrap key's identity: it runs the platform, it is no tenant.

    It may call the platform's RPCs and the gateway's tenant administration (the RPCs that
    need `admin`: making a key for a tenant it names), and nothing that touches a tenant's
    data. Only `platform:admin` is in its scopes, so the identity token it carries to a
    service grants nothing there either: a service's own check refuses it every tenant scope.
    """

    def allows(self, scope: str) -> bool:
        return scope.startswith("platform:") or scope == TENANT_ADMIN


OPERATOR = PlatformOperator(PLATFORM_TENANT, "bootstrap", frozenset({PLATFORM_ADMIN}))


@dataclass(frozen=True)
class _Row:
    identity: Identity | None  # None once revoked
    secret_hash: bytes


class _Recent(Generic[V]):
    """At most `size` entries, each trusted for `ttl` seconds; the least recently used go first."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]) -> None:
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key: str) -> tuple[V] | None:
        """(value,) while fresh; None when absent or stale."""
        found = self._items.get(key)
        if found is None:
            return None
        if self._clock() - found[0] > self._ttl:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return (found[1],)

    def put(self, key: str, value: V) -> None:
        self._items[key] = (self._clock(), value)
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: str) -> None:
        self._items.pop(key, None)


class KeyVerifier:
    def __init__(
        self,
        pool: Pool,
        bootstrap_key: str | None,
        ttl: float,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._bootstrap = _bytes(bootstrap_key) if bootstrap_key else None
        self._found: _Recent[_Row] = _Recent(size, ttl, clock)
        self._unknown: _Recent[None] = _Recent(size, ttl, clock)

    async def verify_authorization(self, header: str) -> Identity | None:
        """The identity behind an `Authorization: Bearer <key>` value (HTTP header or gRPC
        metadata); None when it is missing, malformed, unknown or revoked."""
        token = _bearer(header)
        return await self.verify(token) if token else None

    def cached_authorization(self, header: str) -> Identity | None:
        """As verify_authorization, from what is known without a database lookup."""
        token = _bearer(header)
        if not token:
            return None
        if self._is_bootstrap(token):
            return OPERATOR
        parsed = _KEY_RE.fullmatch(token)
        if parsed is None:
            return None
        row = self._found.get(parsed[1])
        return _check(row[0], parsed[2]) if row is not None else None

    async def verify(self, presented: str) -> Identity | None:
        """The identity of a valid, unrevoked key; None otherwise."""
        if self._is_bootstrap(presented):
            return OPERATOR
        parsed = _KEY_RE.fullmatch(presented)
        if parsed is None:
            return None
        key_id, secret = parsed.groups()
        if self._unknown.get(key_id) is not None:
            return None
        row = self._found.get(key_id)
        if row is None:
            loaded = await self._load(key_id)
            if loaded is None:
                self._unknown.put(key_id, None)
                return None
            self._found.put(key_id, loaded)
            row = (loaded,)
        return _check(row[0], secret)

    def _is_bootstrap(self, presented: str) -> bool:
        # Bytes, not str: compare_digest refuses non-ASCII str, and a header may hold any byte.
        return self._bootstrap is not None and hmac.compare_digest(
            _bytes(presented), self._bootstrap
        )

    async def _load(self, key_id: str) -> _Row | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT tenant_id::text, scopes, secret_hash, revoke_time IS NOT NULL AS revoked"
                " FROM api_keys WHERE id = %s",
                (key_id,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        ident = (
            None
            if row["revoked"]
            else Identity(row["tenant_id"], f"key:{key_id}", frozenset(row["scopes"]))
        )
        return _Row(ident, bytes(row["secret_hash"]))

    def forget(self, key_id: str) -> None:
        self._found.pop(key_id)
        self._unknown.pop(key_id)


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _check(row: _Row, secret: str) -> Identity | None:
    if not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
        return None
    return row.identity
