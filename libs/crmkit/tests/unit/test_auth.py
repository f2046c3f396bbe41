"""The internal identity token: signed, short-lived, scoped; cached without loosening any of that."""

from __future__ import annotations

import time

import pytest

from crmkit import auth
from crmkit.context import Identity

SECRET = "s" * 40
WHO = Identity("7b0c1e9e-4a7f-4a33-9f2e-1f0a6e0d2c11", "key:abc", frozenset({"contacts:read"}))


def test_round_trip() -> None:
    assert auth.verify(auth.mint(WHO, SECRET), SECRET) == WHO


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not.a.jwt",
        auth.mint(WHO, "another-secret-of-enough-length-000"),
        auth.mint(WHO, SECRET, ttl_seconds=-5),  # expired
    ],
)
def test_rejects_forged_malformed_and_expired(token: str) -> None:
    with pytest.raises(auth.InvalidToken):
        auth.verify(token, SECRET)
    with pytest.raises(auth.InvalidToken):
        auth.Verifier(SECRET).verify(token)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_verifier_cache_does_not_outlive_the_token() -> None:
    clock = Clock()
    verifier = auth.Verifier(SECRET, clock=clock)
    token = auth.mint(WHO, SECRET, ttl_seconds=30, now=clock.now)
    assert verifier.verify(token) == WHO
    clock.now += 29
    assert verifier.verify(token) == WHO  # from the cache, still valid
    clock.now += 2
    with pytest.raises(auth.InvalidToken):
        verifier.verify(token)


def test_tampered_token_is_not_served_from_the_cache() -> None:
    verifier = auth.Verifier(SECRET)
    token = auth.mint(WHO, SECRET)
    verifier.verify(token)
    head, body, sig = token.split(".")
    with pytest.raises(auth.InvalidToken):
        verifier.verify(f"{head}.{body}.{sig[:-2]}AA")


def test_token_cache_reuses_then_renews() -> None:
    clock = Clock()
    cache = auth.TokenCache(SECRET, ttl_seconds=60, clock=clock)
    first = cache.token(WHO)
    assert cache.token(WHO) == first
    other = Identity(WHO.tenant_id, "key:other", WHO.scopes)
    assert cache.token(other) != first
    clock.now += 31  # past half the token's life: a fresh one, valid for a full minute
    renewed = cache.token(WHO)
    assert renewed != first
    assert auth.Verifier(SECRET, clock=lambda: clock.now + 59).verify(renewed) == WHO
