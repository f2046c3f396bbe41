"""Token buckets per API key, per tenant and per client address, in this replica's memory.

Each replica enforces the limits on the traffic it sees; with N replicas behind a balancer a
caller gets at most N times the rate. That is the usual trade for no shared store on the hot
path; a shared limiter can replace this class without touching its callers.

The address buckets are charged only by requests that fail authentication: a caller with a
valid key is governed by its key's and tenant's limits, while guessing keys (each unknown key
id costs a database lookup) stops after a burst. Every table of buckets is bounded.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# An IPv6 client usually holds a whole /64: one bucket for it, not 2^64.
_IPV6_CLIENT_PREFIX = 64


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
    """One bucket per key, at most `max_entries` of them.

    When full, the bucket used least recently goes first: it is the one most likely to have
    refilled, and dropping a bucket at worst hands its key a fresh burst, where an unbounded
    table would let a caller with many keys (addresses) exhaust memory.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def take(self, key: str) -> Decision:
        """Spend a token if there is one."""
        return self._decide(key, spend=True)

    def peek(self, key: str) -> Decision:
        """Whether `take` would be allowed now, spending nothing."""
        return self._decide(key, spend=False)

    def _decide(self, key: str, spend: bool) -> Decision:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None and not spend:  # a key never charged has a full bucket
            return Decision(True, self.burst, self.burst, 0, 0)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self._max_entries:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        allowed = bucket.tokens >= 1
        if allowed and spend:
            bucket.tokens -= 1
        missing = self.burst - bucket.tokens
        return Decision(
            allowed=allowed,
            limit=self.burst,
            remaining=int(bucket.tokens),
            reset_seconds=math.ceil(missing / self.rate),
            retry_after=0 if allowed else math.ceil((1 - bucket.tokens) / self.rate),
        )


def client_key(host: str) -> str:
    """The bucket key of a client address: the address, or its /64 for IPv6."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an address (a Unix socket peer): its own bucket
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{_IPV6_CLIENT_PREFIX}", strict=False))
    return str(address)


class RateLimiter:
    """The per-key and per-tenant limits at once (the tighter one is reported in the
    RateLimit-* headers), and the per-address budget of failed authentications."""

    def __init__(
        self, per_key: TokenBuckets, per_tenant: TokenBuckets, per_address: TokenBuckets
    ) -> None:
        self.per_key = per_key
        self.per_tenant = per_tenant
        self.per_address = per_address

    def check(self, key_id: str, tenant_id: str) -> tuple[Decision, str]:
        key = self.per_key.take(key_id)
        if not key.allowed:
            return key, "key"
        tenant = self.per_tenant.take(tenant_id)
        if not tenant.allowed:
            return tenant, "tenant"
        return (key if key.remaining <= tenant.remaining else tenant), ""

    def failures_left(self, host: str) -> Decision:
        """Whether this client address may still fail to authenticate (spends nothing)."""
        return self.per_address.peek(client_key(host))

    def failed(self, host: str) -> None:
        """Charge a failed authentication to the client address."""
        self.per_address.take(client_key(host))
