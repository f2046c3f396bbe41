"""Token buckets per API key and per tenant, held in this gateway replica's memory.

Each replica enforces the limits on the traffic it sees; with N replicas behind a balancer a
caller gets at most N times the rate. That is the usual trade for no shared store on the hot
path; a shared limiter can replace this class without touching its callers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the bucket is full again
    retry_after: int  # seconds until one token is available (0 when allowed)


class TokenBuckets:
    def __init__(self, rate_per_second: float, burst: int, max_entries: int = 100_000) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}
        self._max_entries = max_entries

    def take(self, key: str, now: float | None = None) -> Decision:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_entries:
                self._evict_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        allowed = bucket.tokens >= 1
        if allowed:
            bucket.tokens -= 1
        missing = self.burst - bucket.tokens
        return Decision(
            allowed=allowed,
            limit=self.burst,
            remaining=int(bucket.tokens),
            reset_seconds=math.ceil(missing / self.rate),
            retry_after=0 if allowed else math.ceil((1 - bucket.tokens) / self.rate),
        )

    def _evict_full(self, now: float) -> None:
        # A bucket that has refilled holds no state worth keeping.
        full = [
            k
            for k, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]


class RateLimiter:
    """Both limits at once; the tighter one is reported in the RateLimit-* headers."""

    def __init__(self, per_key: TokenBuckets, per_tenant: TokenBuckets) -> None:
        self.per_key = per_key
        self.per_tenant = per_tenant

    def check(self, key_id: str, tenant_id: str) -> tuple[Decision, str]:
        key = self.per_key.take(key_id)
        if not key.allowed:
            return key, "key"
        tenant = self.per_tenant.take(tenant_id)
        if not tenant.allowed:
            return tenant, "tenant"
        return (key if key.remaining <= tenant.remaining else tenant), ""
