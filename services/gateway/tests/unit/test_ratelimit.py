"""Token buckets on a clock the test moves: bursts, refill, the headers' figures, bounds."""

from __future__ import annotations

import pytest

from trellis_gateway.ratelimit import RateLimiter, TokenBuckets, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_one_token_per_interval() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_second=2, burst=3, clock=clock)
    assert [buckets.take("k").allowed for _ in range(4)] == [True, True, True, False]
    refused = buckets.take("k")
    assert (refused.remaining, refused.retry_after, refused.reset_seconds) == (0, 1, 2)
    clock.now += 0.5  # one token at 2/s
    assert buckets.take("k").allowed
    assert not buckets.take("k").allowed
    clock.now += 60
    full = buckets.take("k")
    assert (full.allowed, full.remaining, full.limit) == (True, 2, 3)


def test_peek_spends_nothing() -> None:
    buckets = TokenBuckets(rate_per_second=1, burst=1, clock=Clock())
    assert buckets.peek("k").allowed
    assert buckets.peek("k").allowed
    assert buckets.take("k").allowed
    assert not buckets.peek("k").allowed
    assert buckets.peek("k").retry_after == 1


def test_the_table_is_bounded_dropping_the_least_recently_used() -> None:
    buckets = TokenBuckets(rate_per_second=0.001, burst=1, max_entries=2, clock=Clock())
    for key in ("a", "b"):
        assert buckets.take(key).allowed
    assert not buckets.take("a").allowed  # "a" used last: "b" goes when "c" comes
    assert buckets.take("c").allowed
    assert not buckets.take("a").allowed  # kept, still empty
    assert buckets.take("b").allowed  # dropped: a fresh bucket


def test_failed_authentications_are_counted_per_address() -> None:
    clock = Clock()
    limiter = RateLimiter(
        TokenBuckets(1, 1, clock=clock),
        TokenBuckets(1, 1, clock=clock),
        TokenBuckets(rate_per_second=1, burst=2, clock=clock),
    )
    for _ in range(2):
        assert limiter.failures_left("192.0.2.1").allowed
        limiter.failed("192.0.2.1")
    assert not limiter.failures_left("192.0.2.1").allowed
    assert limiter.failures_left("192.0.2.2").allowed
    # One IPv6 client holds a /64: its addresses share a budget.
    limiter.failed("2001:db8:1:2::1")
    limiter.failed("2001:db8:1:2:ffff::9")
    assert not limiter.failures_left("2001:db8:1:2::77").allowed
    assert limiter.failures_left("2001:db8:1:3::1").allowed
    clock.now += 1
    assert limiter.failures_left("192.0.2.1").allowed


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:DB8:0:0:1::1", "2001:db8::/64"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_client_keys(host: str, key: str) -> None:
    assert client_key(host) == key
