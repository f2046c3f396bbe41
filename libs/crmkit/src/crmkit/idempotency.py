"""Idempotency keys, recorded by the service that owns the write, in the write's transaction.

A caller that lost an answer cannot know whether its call committed; only the owning service
can. So a call that takes a key (contract.takes_idempotency_key: creates and custom actions)
claims `(tenant, caller, key)` and stores its response in the same transaction as its effect.
A repeat with the same request gets the stored response (same id, same status) without
running again; a repeat with another request is refused; a repeat that arrives while the first
is still running waits for it (the claim's unique index holds it) and then gets its answer.
An error rolls the claim back with everything else, so a key is never left stuck. An answer
that carries a secret is not stored: a repeat is refused, never answered with the secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from crmkit import context, contract, db
from crmkit.errors import FailedPrecondition, ServiceError, invalid_field

METADATA_KEY = "idempotency-key"
MAX_KEY_LENGTH = 255
# The PreconditionFailure type of a key reused with another request (HTTP 422 at the gateway).
KEY_REUSED = "IDEMPOTENCY_KEY"

_CLAIM = """
INSERT INTO idempotency_records (tenant_id, principal, key, method, request_hash)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
RETURNING 1 AS claimed
"""
_STORED = """
SELECT method, request_hash, response, withheld FROM idempotency_records
WHERE tenant_id = %s AND principal = %s AND key = %s
"""
_COMPLETE = """
UPDATE idempotency_records SET response = %s, withheld = %s
WHERE tenant_id = %s AND principal = %s AND key = %s
"""


def request_hash(full_method: str, request: Message) -> bytes:
    # Deterministic serialisation: map entries in a stable order, so equal requests hash equal.
    body = request.SerializeToString(deterministic=True)
    return hashlib.sha256(full_method.encode() + b"\0" + body).digest()


def key_reused() -> ServiceError:
    text = "this idempotency key was used with another request"
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        text,
        [(METADATA_KEY, text)],
        [(KEY_REUSED, "idempotency-key", text)],
    )


async def once(
    pool: db.Pool,
    full_method: str,
    key: str,
    request: Message,
    response_class: type[Message],
    call: Callable[[], Awaitable[Any]],
) -> Message:
    """Run `call` at most once per (tenant, caller, key); a repeat returns the first answer."""
    if len(key) > MAX_KEY_LENGTH:
        raise invalid_field(METADATA_KEY, f"at most {MAX_KEY_LENGTH} characters")
    who = context.caller()
    fingerprint = request_hash(full_method, request)
    ids = (who.tenant_id, who.principal, key)
    async with db.joined(pool, who.tenant_id) as conn:
        cur = await conn.execute(_CLAIM, (*ids, full_method, fingerprint))
        if await cur.fetchone() is None:
            # Taken, and committed: a concurrent first call held us on the index until then.
            cur = await conn.execute(_STORED, ids)
            row = await cur.fetchone()
            assert row is not None  # the conflicting row is committed and ours to see
            if row["method"] != full_method or bytes(row["request_hash"]) != fingerprint:
                raise key_reused()
            if row["withheld"]:
                raise FailedPrecondition(
                    "this request was done and its answer held a secret, which is shown only "
                    "once; read the resource, and rotate the secret if it was lost"
                )
            return response_class.FromString(bytes(row["response"]))
        response: Message = await call()
        withheld = contract.carries_secret(response)
        stored = b"" if withheld else response.SerializeToString()
        await conn.execute(_COMPLETE, (stored, withheld, *ids))
        return response
