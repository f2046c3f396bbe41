"""The Idempotency-Key store: a repeated POST gets the first response, not a second effect.

The first request with a key claims it (a row with no response yet); the response is stored
when it is known. A repeat with the same body replays it; with another body it is 422; while
the first is still running it is 409. A failure the caller may retry (5xx) releases the key.
Keys are per tenant and expire after the configured TTL (24 h by default).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from psycopg.types.json import Jsonb

from crmkit.db import Pool

MAX_KEY_LENGTH = 255


class Outcome(Enum):
    PROCEED = "proceed"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] | None = None


def request_hash(method: str, path: str, query: str, body: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class IdempotencyStore:
    def __init__(self, pool: Pool, ttl_hours: int) -> None:
        self._pool = pool
        self._ttl = timedelta(hours=ttl_hours)

    async def claim(self, tenant_id: str, key: str, fingerprint: bytes) -> Claim:
        async with self._pool.connection() as conn:
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE tenant_id = %s AND key = %s"
                " AND expires_at < now()",
                (tenant_id, key),
            )
            cur = await conn.execute(
                "INSERT INTO idempotency_keys (tenant_id, key, request_hash, expires_at)"
                " VALUES (%s, %s, %s, now() + %s) ON CONFLICT DO NOTHING RETURNING 1",
                (tenant_id, key, fingerprint, self._ttl),
            )
            if await cur.fetchone() is not None:
                return Claim(Outcome.PROCEED)
            cur = await conn.execute(
                "SELECT request_hash, status_code, response_body, response_headers"
                " FROM idempotency_keys WHERE tenant_id = %s AND key = %s",
                (tenant_id, key),
            )
            row = await cur.fetchone()
        if row is None:  # released between our insert and select: let this one run
            return await self.claim(tenant_id, key, fingerprint)
        if bytes(row["request_hash"]) != fingerprint:
            return Claim(Outcome.MISMATCH)
        if row["status_code"] is None:
            return Claim(Outcome.IN_PROGRESS)
        return Claim(
            Outcome.REPLAY, row["status_code"], bytes(row["response_body"]), row["response_headers"]
        )

    async def complete(
        self, tenant_id: str, key: str, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE idempotency_keys SET status_code = %s, response_body = %s,"
                " response_headers = %s WHERE tenant_id = %s AND key = %s",
                (status, body, Jsonb(headers), tenant_id, key),
            )

    async def release(self, tenant_id: str, key: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE tenant_id = %s AND key = %s", (tenant_id, key)
            )

    async def purge_expired(self) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute("DELETE FROM idempotency_keys WHERE expires_at < now()")
            return cur.rowcount
