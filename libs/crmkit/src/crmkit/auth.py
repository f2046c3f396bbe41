"""The internal identity token: the gateway signs who is calling, services verify it.

A short-lived HS256 JWT in the `trellis-identity` gRPC metadata entry. Services never trust a
bare tenant header; without a valid token a call is UNAUTHENTICATED.
"""

from __future__ import annotations

import time

import jwt

from crmkit.context import Identity

METADATA_KEY = "trellis-identity"
_ISSUER = "trellis-gateway"
_AUDIENCE = "trellis-services"
_ALGORITHM = "HS256"


class InvalidToken(Exception):
    pass


def mint(ident: Identity, secret: str, ttl_seconds: int = 60) -> str:
    now = int(time.time())
    claims = {
        "iss": _ISSUER,
        "aud": _AUDIENCE,
        "iat": now,
        "exp": now + ttl_seconds,
        "sub": ident.principal,
        "tid": ident.tenant_id,
        "scp": sorted(ident.scopes),
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def verify(token: str, secret: str) -> Identity:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            audience=_AUDIENCE,
            issuer=_ISSUER,
            options={"require": ["exp", "iat", "sub", "tid"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    scopes = claims.get("scp", [])
    if not isinstance(claims["tid"], str) or not isinstance(scopes, list):
        raise InvalidToken("malformed claims")
    return Identity(
        tenant_id=claims["tid"], principal=str(claims["sub"]), scopes=frozenset(map(str, scopes))
    )
