"""The internal identity token: the gateway signs who is calling, services verify it.

A short-lived HS256 JWT in the `trellis-identity` gRPC metadata entry. Services never trust a
bare tenant header; without a valid token a call is UNAUTHENTICATED.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt

from crmkit.context import Identity

METADATA_KEY = "trellis-identity"
_ISSUER = "trellis-gateway"
_AUDIENCE = "trellis-services"
_ALGORITHM = "HS256"


class InvalidToken(Exception):
    pass


def mint(ident: Identity, secret: str, ttl_seconds: int = 60, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": _ISSUER,
        "aud": _AUDIENCE,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "sub": ident.principal,
        "tid": ident.tenant_id,
        "scp": sorted(ident.scopes),
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


class TokenCache:
    """Minted tokens, reused for half their life: the gateway signs once per caller, not per call."""

    def __init__(
        self,
        secret: str,
        ttl_seconds: int = 60,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._tokens: dict[Identity, tuple[str, float]] = {}

    def token(self, ident: Identity) -> str:
        now = self._clock()
        found = self._tokens.get(ident)
        if found is not None and now < found[1]:
            return found[0]
        if len(self._tokens) >= self._max:
            self._tokens.clear()
        token = mint(ident, self._secret, self._ttl, now=now)
        self._tokens[ident] = (token, now + self._ttl / 2)
        return token


class Verifier:
    """Verifies tokens, remembering the ones already verified until they expire.

    The same token arrives many times (the gateway reuses it), and a byte-identical token
    that verified once verifies again until its `exp`, so the HMAC is checked once.
    """

    def __init__(
        self, secret: str, max_entries: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._secret = secret
        self._max = max_entries
        self._clock = clock
        self._known: dict[str, tuple[Identity, float]] = {}

    def verify(self, token: str) -> Identity:
        found = self._known.get(token)
        if found is not None and self._clock() < found[1]:
            return found[0]
        ident, expires = _verify(token, self._secret, self._clock())
        if len(self._known) >= self._max:
            self._known.clear()
        self._known[token] = (ident, expires)
        return ident


def verify(token: str, secret: str) -> Identity:
    return _verify(token, secret, time.time())[0]


def _verify(token: str, secret: str, now: float) -> tuple[Identity, float]:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            audience=_AUDIENCE,
            issuer=_ISSUER,
            # Time is compared below with the caller's clock, so caches and tests agree on it.
            options={
                "require": ["exp", "iat", "sub", "tid"],
                "verify_exp": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    if not isinstance(claims["exp"], int | float) or claims["exp"] <= now:
        raise InvalidToken("expired")
    scopes = claims.get("scp", [])
    if not isinstance(claims["tid"], str) or not isinstance(scopes, list):
        raise InvalidToken("malformed claims")
    ident = Identity(
        tenant_id=claims["tid"], principal=str(claims["sub"]), scopes=frozenset(map(str, scopes))
    )
    return ident, float(claims["exp"])
