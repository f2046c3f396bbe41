"""The Idempotency-Key store on PostgreSQL: claims, replays, mismatches, leases, scoping."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from crmkit import db
from crmkit.context import Identity
from trellis_gateway.idempotency import IdempotencyStore, Outcome, request_hash

from .support import GatewayDb, ManualClock

TENANT = "6b0e2f4c-8a55-4d8e-9a4e-3a4f5e6d7c8b"
OTHER_TENANT = "7c1f3a5d-9b66-4e9f-8b5f-4b5a6f7e8d9c"
ALICE = Identity(TENANT, "key:alice00000000000", frozenset({"admin"}))
BOB = Identity(TENANT, "key:bob0000000000000", frozenset({"admin"}))
CAROL = Identity(OTHER_TENANT, "key:alice00000000000", frozenset({"admin"}))
LEASE = timedelta(seconds=15)
BODY = request_hash("POST", "/v1/contacts", "", b'{"first_name": "Ada"}')
OTHER_BODY = request_hash("POST", "/v1/contacts", "", b'{"first_name": "Bea"}')


def _store(pool: db.Pool, clock: ManualClock) -> IdempotencyStore:
    return IdempotencyStore(pool, ttl=timedelta(hours=24), lease=LEASE, clock=clock.wall)


async def test_first_claim_runs_then_repeats_replay_and_other_bodies_mismatch(
    pool: db.Pool, clock: ManualClock
) -> None:
    store = _store(pool, clock)
    first = await store.claim(ALICE, "k1", BODY)
    assert first.outcome is Outcome.PROCEED
    assert first.token is not None
    assert (await store.claim(ALICE, "k1", BODY)).outcome is Outcome.IN_PROGRESS
    assert (await store.claim(ALICE, "k1", OTHER_BODY)).outcome is Outcome.MISMATCH

    await store.complete(ALICE, "k1", first.token, 201, b'{"id": "c1"}', {"etag": '"e1"'})
    replay = await store.claim(ALICE, "k1", BODY)
    assert replay.outcome is Outcome.REPLAY
    assert (replay.status, replay.body, replay.headers) == (201, b'{"id": "c1"}', {"etag": '"e1"'})
    assert not replay.withheld
    assert (await store.claim(ALICE, "k1", OTHER_BODY)).outcome is Outcome.MISMATCH


async def test_keys_belong_to_the_calling_key_not_only_its_tenant(
    pool: db.Pool, clock: ManualClock
) -> None:
    store = _store(pool, clock)
    mine = await store.claim(ALICE, "shared", BODY)
    assert mine.token is not None
    await store.complete(ALICE, "shared", mine.token, 201, b"alice's answer", {})
    # Another key of the same tenant, and the same key id in another tenant, run their own.
    for caller in (BOB, CAROL):
        theirs = await store.claim(caller, "shared", BODY)
        assert theirs.outcome is Outcome.PROCEED, caller
    assert (await store.claim(ALICE, "shared", BODY)).body == b"alice's answer"


async def test_a_claim_whose_holder_died_is_taken_over_after_its_lease(
    pool: db.Pool, clock: ManualClock
) -> None:
    store = _store(pool, clock)
    dead = await store.claim(ALICE, "k", BODY)
    assert dead.token is not None
    clock.advance(LEASE.total_seconds() - 1)
    assert (await store.claim(ALICE, "k", BODY)).outcome is Outcome.IN_PROGRESS
    clock.advance(2)
    # Another request under a lapsed claim is still refused: the first may have committed.
    assert (await store.claim(ALICE, "k", OTHER_BODY)).outcome is Outcome.MISMATCH
    retry = await store.claim(ALICE, "k", BODY)
    assert retry.outcome is Outcome.PROCEED
    assert retry.token not in (None, dead.token)
    assert (await store.claim(ALICE, "k", BODY)).outcome is Outcome.IN_PROGRESS

    # The late first attempt can neither release nor answer for the retry's claim.
    await store.release(ALICE, "k", dead.token)
    await store.complete(ALICE, "k", dead.token, 500, b"late", {})
    assert (await store.claim(ALICE, "k", BODY)).outcome is Outcome.IN_PROGRESS
    assert retry.token is not None
    await store.complete(ALICE, "k", retry.token, 201, b"retry's answer", {})
    assert (await store.claim(ALICE, "k", BODY)).body == b"retry's answer"


async def test_a_released_key_runs_again_and_an_expired_one_with_any_body(
    pool: db.Pool, clock: ManualClock
) -> None:
    store = _store(pool, clock)
    first = await store.claim(ALICE, "k", BODY)
    assert first.token is not None
    await store.release(ALICE, "k", first.token)
    again = await store.claim(ALICE, "k", BODY)
    assert again.outcome is Outcome.PROCEED
    assert again.token is not None
    await store.complete(ALICE, "k", again.token, 201, b"done", {})

    clock.advance(timedelta(hours=24).total_seconds() + 1)
    assert (await store.claim(ALICE, "k", OTHER_BODY)).outcome is Outcome.PROCEED
    assert await store.purge_expired() == 0  # the key is in use again, with a new expiry
    clock.advance(timedelta(hours=24).total_seconds() + 1)
    assert await store.purge_expired() == 1


async def test_an_answer_with_a_secret_is_withheld_not_stored(
    pool: db.Pool, clock: ManualClock, gateway_db: GatewayDb
) -> None:
    store = _store(pool, clock)
    claim = await store.claim(ALICE, "k", BODY)
    assert claim.token is not None
    await store.complete(ALICE, "k", claim.token, 201, None, {"location": "/v1/api-keys/x"})
    replay = await store.claim(ALICE, "k", BODY)
    assert replay.outcome is Outcome.REPLAY
    assert replay.withheld
    assert replay.body == b""
    assert replay.headers == {"location": "/v1/api-keys/x"}
    async with await psycopg.AsyncConnection.connect(gateway_db.superuser_url) as conn:
        row = await (await conn.execute("SELECT response_body FROM idempotency_keys")).fetchone()
    assert row == (None,)
