"""The internal identity token: who is calling, signed by its issuer, verified by services.

A short-lived EdDSA (Ed25519) JWT in the `trellis-identity` gRPC metadata entry. Signing is
asymmetric: the gateway alone holds the private key that may assert any tenant's caller;
services hold only public keys (a JWKS), so no service can mint a token. A service that must
act as itself (not on behalf of the caller it serves) has a key of its own whose JWK lists the
few scopes it may claim, always as principal `service:<name>`. Keys carry ids (`kid`) so they
can rotate: the JWKS holds the old and the new key while tokens of both are in flight.
Services never trust a bare tenant header; without a valid token a call is UNAUTHENTICATED.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crmkit.context import Identity

METADATA_KEY = "trellis-identity"
GATEWAY = "gateway"
_AUDIENCE = "trellis-services"
_ALGORITHM = "EdDSA"
# A token lives at most this long, whatever it claims; the gateway mints 60 s tokens.
MAX_LIFETIME_SECONDS = 120
# Clocks of replicas differ a little; an `iat` further in the future than this is refused.
CLOCK_SKEW_SECONDS = 5
# Where a JWK says what its issuer may claim (absent on the gateway's keys: anything).
_SCOPES_MEMBER = "trellis_scopes"


class InvalidToken(Exception):
    pass


def _issuer_claim(issuer: str) -> str:
    return f"trellis-{issuer}"


@dataclass(frozen=True)
class SigningKey:
    """A private key and its id; the issuer is the part of the id before the first '-'."""

    kid: str
    private: Ed25519PrivateKey

    @property
    def issuer(self) -> str:
        return self.kid.split("-", 1)[0]

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        return cls(kid, Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, kid: str, pem: str) -> SigningKey:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the internal token key must be an Ed25519 private key")
        return cls(kid, key)

    def pem(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def public_jwk(self, scopes: list[str] | None = None) -> dict[str, Any]:
        """The public half as a JWK; `scopes` bounds what a service's own key may claim."""
        jwk: dict[str, Any] = json.loads(
            jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key())
        )
        jwk |= {"kid": self.kid, "use": "sig", "alg": _ALGORITHM}
        if scopes is not None:
            jwk[_SCOPES_MEMBER] = sorted(scopes)
        return jwk


def jwks(*keys: dict[str, Any]) -> str:
    return json.dumps({"keys": list(keys)})


def mint(ident: Identity, key: SigningKey, ttl_seconds: int = 60, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": _issuer_claim(key.issuer),
        "aud": _AUDIENCE,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "sub": ident.principal,
        "tid": ident.tenant_id,
        "scp": sorted(ident.scopes),
    }
    return jwt.encode(claims, key.private, algorithm=_ALGORITHM, headers={"kid": key.kid})


class TokenCache:
    """Minted tokens, reused for half their life: the gateway signs once per caller, not per call."""

    def __init__(
        self,
        key: SigningKey,
        ttl_seconds: int = 60,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
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
        token = mint(ident, self._key, self._ttl, now=now)
        self._tokens[ident] = (token, now + self._ttl / 2)
        return token


@dataclass(frozen=True)
class TrustedKey:
    kid: str
    public: Ed25519PublicKey
    scopes: frozenset[str] | None  # None: the key may assert any caller (the gateway's)

    @property
    def issuer(self) -> str:
        return self.kid.split("-", 1)[0]


def load_jwks(text: str) -> dict[str, TrustedKey]:
    """The trusted public keys of a JWKS document, by key id; raises ValueError if malformed."""
    try:
        document = json.loads(text)
        found: dict[str, TrustedKey] = {}
        for jwk in document["keys"]:
            public = jwt.algorithms.OKPAlgorithm.from_jwk(jwk)
            if not isinstance(public, Ed25519PublicKey) or not jwk.get("kid"):
                raise ValueError("every key must be an Ed25519 public key with a kid")
            scopes = jwk.get(_SCOPES_MEMBER)
            if jwk["kid"].split("-", 1)[0] == GATEWAY:
                allowed = None
            else:  # a service's own key: never more than its JWK says
                allowed = frozenset(map(str, scopes or []))
            found[jwk["kid"]] = TrustedKey(jwk["kid"], public, allowed)
    except (KeyError, TypeError, jwt.InvalidKeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JWKS of Ed25519 keys: {exc}") from None
    if not found:
        raise ValueError("the JWKS holds no key")
    return found


class Verifier:
    """Verifies tokens, remembering the ones already verified until they expire.

    The same token arrives many times (the gateway reuses it), and a byte-identical token
    that verified once verifies again until its `exp`, so the signature is checked once.
    """

    def __init__(
        self,
        keys: Mapping[str, TrustedKey],
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = dict(keys)
        self._max = max_entries
        self._clock = clock
        self._known: dict[str, tuple[Identity, float]] = {}

    def verify(self, token: str) -> Identity:
        now = self._clock()
        found = self._known.get(token)
        if found is not None and now < found[1]:
            return found[0]
        ident, expires = self._verify(token, now)
        if len(self._known) >= self._max:
            self._known.clear()
        self._known[token] = (ident, expires)
        return ident

    def _verify(self, token: str, now: float) -> tuple[Identity, float]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key.public,
                algorithms=[_ALGORITHM],
                audience=_AUDIENCE,
                issuer=_issuer_claim(key.issuer),
                # Time is compared below with the verifier's clock, so caches and tests agree.
                options={
                    "require": ["exp", "iat", "sub", "tid"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        issued, expires = claims["iat"], claims["exp"]
        if not all(isinstance(t, int | float) for t in (issued, expires)):
            raise InvalidToken("malformed times")
        if expires <= now:
            raise InvalidToken("expired")
        if issued > now + CLOCK_SKEW_SECONDS:
            raise InvalidToken("issued in the future")
        if expires - issued > MAX_LIFETIME_SECONDS:
            raise InvalidToken(f"lives longer than {MAX_LIFETIME_SECONDS} s")
        scopes = claims.get("scp", [])
        if not isinstance(claims["tid"], str) or not isinstance(scopes, list):
            raise InvalidToken("malformed claims")
        ident = Identity(
            tenant_id=claims["tid"],
            principal=str(claims["sub"]),
            scopes=frozenset(map(str, scopes)),
        )
        if key.scopes is not None and (
            ident.principal != f"service:{key.issuer}" or not ident.scopes <= key.scopes
        ):
            raise InvalidToken(
                f"the {key.issuer} service may act only as itself, within its scopes"
            )
        return ident, float(expires)
