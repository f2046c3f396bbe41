"""API-key verification on PostgreSQL: what is cached, for how long, how much, and revocation."""

from __future__ import annotations

import uuid

import pytest

from crmkit import db
from trellis_gateway import apikeys
from trellis_gateway.apikeys import KeyVerifier

from .support import BOOTSTRAP, ManualClock

TTL = 5.0


async def _key(pool: db.Pool, scopes: tuple[str, ...] = ("contacts:read",)) -> tuple[str, str]:
    """A new tenant with one key, written as admin.py writes them: (key id, secret)."""
    tenant_id = str(uuid.uuid4())
    key_id, secret, secret_hash = apikeys.generate()
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 't')", (tenant_id,))
        await conn.execute(
            "INSERT INTO api_keys (id, tenant_id, name, scopes, secret_hash)"
            " VALUES (%s, %s, 'k', %s, %s)",
            (key_id, tenant_id, list(scopes), secret_hash),
        )
    return key_id, secret


async def _revoke_behind_the_cache(pool: db.Pool, key_id: str) -> None:
    async with pool.connection() as conn:
        await conn.execute("UPDATE api_keys SET revoke_time = now() WHERE id = %s", (key_id,))


def _verifier(pool: db.Pool, clock: ManualClock, size: int = 100) -> KeyVerifier:
    return KeyVerifier(pool, BOOTSTRAP, TTL, size, clock.monotonic)


async def test_a_verified_key_is_trusted_for_the_ttl_then_looked_up_again(
    pool: db.Pool, clock: ManualClock
) -> None:
    verifier = _verifier(pool, clock)
    key_id, secret = await _key(pool)
    ident = await verifier.verify(secret)
    assert ident is not None
    assert ident.principal == f"key:{key_id}"
    assert ident.scopes == frozenset({"contacts:read"})
    assert await verifier.verify(secret[:-1] + "x") is None  # the cached row checks the secret

    await _revoke_behind_the_cache(pool, key_id)
    assert await verifier.verify(secret) == ident  # a hit: no lookup within the TTL
    clock.advance(TTL + 0.1)
    assert await verifier.verify(secret) is None


async def test_an_unknown_key_id_is_remembered_for_the_ttl(
    pool: db.Pool, clock: ManualClock
) -> None:
    verifier = _verifier(pool, clock)
    key_id, secret, secret_hash = apikeys.generate()
    assert await verifier.verify(secret) is None
    tenant_id = str(uuid.uuid4())
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO tenants (id, name) VALUES (%s, 't')", (tenant_id,))
        await conn.execute(
            "INSERT INTO api_keys (id, tenant_id, name, scopes, secret_hash)"
            " VALUES (%s, %s, 'k', %s, %s)",
            (key_id, tenant_id, ["admin"], secret_hash),
        )
    assert await verifier.verify(secret) is None  # a remembered miss: no lookup
    clock.advance(TTL + 0.1)
    assert await verifier.verify(secret) is not None


async def test_both_caches_are_bounded_and_misses_never_evict_hits(
    pool: db.Pool, clock: ManualClock
) -> None:
    verifier = _verifier(pool, clock, size=2)
    keys = [await _key(pool) for _ in range(3)]
    for _, secret in keys:
        assert await verifier.verify(secret) is not None
    for key_id, _ in keys:
        await _revoke_behind_the_cache(pool, key_id)
    # A flood of made-up ids goes to the unknown ids' cache, not the found keys' one.
    for _ in range(10):
        assert await verifier.verify(apikeys.generate()[1]) is None
    # Size 2: the two keys used last are still cached, flood or not; the least recently
    # used one was dropped, so it is looked up again (and found revoked).
    assert await verifier.verify(keys[1][1]) is not None
    assert await verifier.verify(keys[2][1]) is not None
    assert await verifier.verify(keys[0][1]) is None


async def test_a_revocation_on_this_replica_applies_at_once(
    pool: db.Pool, clock: ManualClock
) -> None:
    verifier = _verifier(pool, clock)
    key_id, secret = await _key(pool)
    assert await verifier.verify(secret) is not None
    await _revoke_behind_the_cache(pool, key_id)
    verifier.forget(key_id)
    assert await verifier.verify(secret) is None


async def test_only_already_verified_keys_pass_without_a_lookup(
    pool: db.Pool, clock: ManualClock
) -> None:
    verifier = _verifier(pool, clock)
    _, known = await _key(pool)
    _, unseen = await _key(pool)
    assert await verifier.verify(known) is not None
    assert verifier.cached_authorization(f"Bearer {known}") is not None
    assert verifier.cached_authorization(f"Bearer {unseen}") is None
    assert verifier.cached_authorization(f"Bearer {BOOTSTRAP}") is apikeys.OPERATOR


@pytest.mark.parametrize(
    "header",
    [
        "Bearer ключ",
        "Bearer trellis_0123456789abcdef_" + "é" * 43,
        "Bearer \udcff",
        "Bearer " + "\x00" * 64,
        "Bearer " + BOOTSTRAP[:-1] + "ü",
    ],
)
async def test_any_authorization_value_is_verified_or_refused_never_an_error(
    pool: db.Pool, clock: ManualClock, header: str
) -> None:
    assert await _verifier(pool, clock).verify_authorization(header) is None


async def test_the_platform_operator_administers_tenants_and_nothing_in_them(
    pool: db.Pool, clock: ManualClock
) -> None:
    operator = await _verifier(pool, clock).verify(BOOTSTRAP)
    assert operator is apikeys.OPERATOR
    assert operator.scopes == frozenset({"platform:admin"})
    assert operator.allows("platform:admin")
    assert operator.allows("admin")  # making keys for the tenants it names
    for scope in ("contacts:read", "contacts:write", "sales:write", ""):
        assert not operator.allows(scope), scope
