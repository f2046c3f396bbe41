"""The internal identity token: asymmetric, short-lived, scoped; cached without loosening any of
that; a service's own key never speaks for anyone else."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from crmkit import auth
from crmkit.context import Identity

GATEWAY_KEY = auth.SigningKey.generate("gateway-1")
ROTATED_KEY = auth.SigningKey.generate("gateway-2")
NOTIFY_KEY = auth.SigningKey.generate("notify-1")
TRUSTED = auth.load_jwks(
    auth.jwks(
        GATEWAY_KEY.public_jwk(),
        ROTATED_KEY.public_jwk(),
        NOTIFY_KEY.public_jwk(scopes=["contacts:read"]),
    )
)
WHO = Identity("7b0c1e9e-4a7f-4a33-9f2e-1f0a6e0d2c11", "key:abc", frozenset({"contacts:read"}))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock | None = None) -> auth.Verifier:
    return auth.Verifier(TRUSTED, clock=clock or time.time)


def test_round_trip_with_either_key_during_rotation() -> None:
    for key in (GATEWAY_KEY, ROTATED_KEY):
        assert verifier().verify(auth.mint(WHO, key)) == WHO


def _forged(claims: dict[str, object]) -> str:
    """A token signed by the gateway's key but with claims the gateway would never set."""
    now = int(time.time())
    base = {
        "iss": "trellis-gateway",
        "aud": "trellis-services",
        "iat": now,
        "exp": now + 60,
        "sub": "key:abc",
        "tid": WHO.tenant_id,
        "scp": ["admin"],
    }
    return jwt.encode(
        base | claims, GATEWAY_KEY.private, algorithm="EdDSA", headers={"kid": "gateway-1"}
    )


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not.a.jwt",
        auth.mint(WHO, auth.SigningKey.generate("gateway-1")),  # same kid, another key
        auth.mint(WHO, auth.SigningKey.generate("gateway-9")),  # a key nobody trusts
        auth.mint(WHO, GATEWAY_KEY, ttl_seconds=-5),  # expired
        _forged({"exp": int(time.time()) + 10 * 365 * 86400}),  # ten years
        _forged({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 3660}),  # future
        _forged({"iss": "trellis-notify"}),  # issuer and key disagree
        # The old shared-secret kind: HS256 is not an algorithm a service accepts.
        jwt.encode({"sub": "x", "tid": WHO.tenant_id}, "s" * 40, headers={"kid": "gateway-1"}),
    ],
    ids=[
        "empty",
        "garbage",
        "wrong-key",
        "unknown-kid",
        "expired",
        "ten-years",
        "future-iat",
        "issuer-mismatch",
        "hs256",
    ],
)
def test_rejects_forged_malformed_expired_and_overlong(token: str) -> None:
    with pytest.raises(auth.InvalidToken):
        verifier().verify(token)


def test_a_service_key_acts_only_as_itself_within_its_scopes() -> None:
    itself = Identity(WHO.tenant_id, "service:notify", frozenset({"contacts:read"}))
    assert verifier().verify(auth.mint(itself, NOTIFY_KEY)) == itself
    for impostor in (
        Identity(WHO.tenant_id, "key:abc", frozenset({"contacts:read"})),  # someone else
        Identity(WHO.tenant_id, "service:notify", frozenset({"admin"})),  # more than allowed
    ):
        with pytest.raises(auth.InvalidToken, match="only as itself"):
            verifier().verify(auth.mint(impostor, NOTIFY_KEY))


def test_verifier_cache_does_not_outlive_the_token() -> None:
    clock = Clock()
    checking = verifier(clock)
    token = auth.mint(WHO, GATEWAY_KEY, ttl_seconds=30, now=clock.now)
    assert checking.verify(token) == WHO
    clock.now += 29
    assert checking.verify(token) == WHO  # from the cache, still valid
    clock.now += 2
    with pytest.raises(auth.InvalidToken):
        checking.verify(token)


def test_tampered_token_is_not_served_from_the_cache() -> None:
    checking = verifier()
    token = auth.mint(WHO, GATEWAY_KEY)
    checking.verify(token)
    head, body, sig = token.split(".")
    flipped = "B" if sig[5] == "A" else "A"  # a character that surely differs
    with pytest.raises(auth.InvalidToken):
        checking.verify(f"{head}.{body}.{sig[:5]}{flipped}{sig[6:]}")


def test_token_cache_reuses_then_renews() -> None:
    clock = Clock()
    cache = auth.TokenCache(GATEWAY_KEY, ttl_seconds=60, clock=clock)
    first = cache.token(WHO)
    assert cache.token(WHO) == first
    other = Identity(WHO.tenant_id, "key:other", WHO.scopes)
    assert cache.token(other) != first
    clock.now += 31  # past half the token's life: a fresh one, valid for a full minute
    renewed = cache.token(WHO)
    assert renewed != first
    assert auth.Verifier(TRUSTED, clock=lambda: clock.now + 59).verify(renewed) == WHO


def test_keys_round_trip_through_pem_and_jwks() -> None:
    again = auth.SigningKey.from_pem("gateway-1", GATEWAY_KEY.pem())
    assert verifier().verify(auth.mint(WHO, again)) == WHO
    for bad in ("", "{}", json.dumps({"keys": [{"kty": "oct", "k": "x", "kid": "a-1"}]})):
        with pytest.raises(ValueError, match="JWKS"):
            auth.load_jwks(bad)
