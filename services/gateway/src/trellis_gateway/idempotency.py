"""The REST Idempotency-Key store: a repeated POST gets the first response, not a second effect.

Keys belong to the calling API key (tenant and principal). The first request with a key claims
it for a lease; its response is stored when it is known. A repeat with the same request
replays it; with another request it is 422; while the first still holds its lease it is 409.
An answer the caller may retry (5xx, 429) releases the key. A claim whose holder died (its
lease lapsed) is taken over by the next repeat of the same request: the key also travels to
the owning service, which recorded it with its write, so the retry cannot write twice.

A response carrying a secret (a new API key) is never stored: the row records that the request
succeeded and where the resource is, and a repeat is told the secret was shown only once.
Every time here comes from the injected clock, so leases and expiry are testable.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum

from psycopg.types.json import Jsonb

from crmkit.clock import Clock, system_clock
from crmkit.context import Identity
from crmkit.db import Pool

MAX_KEY_LENGTH = 255

_CLAIM = """
INSERT INTO idempotency_keys AS k
    (tenant_id, principal, key, request_hash, expires_at, claim, lease_until)
VALUES (%(tenant)s, %(principal)s, %(key)s, %(hash)s, %(expires)s, %(claim)s, %(lease)s)
ON CONFLICT (tenant_id, principal, key) DO UPDATE SET
    request_hash = excluded.request_hash, expires_at = excluded.expires_at,
    claim = excluded.claim, lease_until = excluded.lease_until,
    status_code = NULL, response_body = NULL, response_headers = NULL, withheld = false
WHERE k.expires_at <= %(now)s
   OR (k.status_code IS NULL AND k.lease_until <= %(now)s AND k.request_hash = excluded.request_hash)
RETURNING 1 AS claimed
"""
_STORED = """
SELECT request_hash, status_code, response_body, response_headers, withheld
FROM idempotency_keys WHERE tenant_id = %s AND principal = %s AND key = %s
"""
_COMPLETE = """
UPDATE idempotency_keys
SET status_code = %s, response_body = %s, response_headers = %s, withheld = %s,
    claim = NULL, lease_until = NULL
WHERE tenant_id = %s AND principal = %s AND key = %s AND claim = %s
"""
_RELEASE = """
DELETE FROM idempotency_keys WHERE tenant_id = %s AND principal = %s AND key = %s AND claim = %s
"""


class Outcome(Enum):
    PROCEED = "proceed"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    token: uuid.UUID | None = None  # the attempt's hold on the key (PROCEED)
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    withheld: bool = False  # REPLAY of an answer that carried a secret: no body kept


def request_hash(method: str, path: str, query: str, body: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class IdempotencyStore:
    def __init__(
        self,
        pool: Pool,
        ttl: timedelta,
        lease: timedelta,
        clock: Clock = system_clock,
    ) -> None:
        self._pool = pool
        self._ttl = ttl
        self._lease = lease
        self._clock = clock

    async def claim(self, caller: Identity, key: str, fingerprint: bytes) -> Claim:
        ids = (caller.tenant_id, caller.principal, key)
        async with self._pool.connection() as conn:
            # A holder that finishes between our insert and our read deletes the row (a
            # release): the next round claims it. Bounded, in case one keeps doing so.
            for _ in range(3):
                now = self._clock()
                token = uuid.uuid4()
                cur = await conn.execute(
                    _CLAIM,
                    {
                        "tenant": caller.tenant_id,
                        "principal": caller.principal,
                        "key": key,
                        "hash": fingerprint,
                        "expires": now + self._ttl,
                        "claim": token,
                        "lease": now + self._lease,
                        "now": now,
                    },
                )
                if await cur.fetchone() is not None:
                    return Claim(Outcome.PROCEED, token)
                row = await (await conn.execute(_STORED, ids)).fetchone()
                if row is not None:
                    break
            else:
                return Claim(Outcome.IN_PROGRESS)
        if bytes(row["request_hash"]) != fingerprint:
            return Claim(Outcome.MISMATCH)
        if row["status_code"] is None:
            return Claim(Outcome.IN_PROGRESS)
        return Claim(
            Outcome.REPLAY,
            status=row["status_code"],
            body=bytes(row["response_body"] or b""),
            headers=row["response_headers"] or {},
            withheld=row["withheld"],
        )

    async def complete(
        self,
        caller: Identity,
        key: str,
        token: uuid.UUID,
        status: int,
        body: bytes | None,
        headers: dict[str, str],
    ) -> None:
        """Store the answer; body None withholds it (it carried a secret)."""
        async with self._pool.connection() as conn:
            await conn.execute(
                _COMPLETE,
                (
                    status,
                    body,
                    Jsonb(headers),
                    body is None,
                    caller.tenant_id,
                    caller.principal,
                    key,
                    token,
                ),
            )

    async def release(self, caller: Identity, key: str, token: uuid.UUID) -> None:
        """Give the key back so a retry runs; only while this attempt still holds it."""
        async with self._pool.connection() as conn:
            await conn.execute(_RELEASE, (caller.tenant_id, caller.principal, key, token))

    async def purge_expired(self) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM idempotency_keys WHERE expires_at < %s", (self._clock(),)
            )
            return cur.rowcount
