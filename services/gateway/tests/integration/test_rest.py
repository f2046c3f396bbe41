"""The REST front on a real database and a real gRPC backend: idempotency, authentication,
authorisation and the HTTP rules (conditions, media types, created resources)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from google.protobuf.message import Message

from crm.contacts.v1 import contacts_pb2
from crmkit import db, idempotency
from crmkit.errors import NotFound, StaleEtag
from trellis_gateway.idempotency import request_hash

from .support import (
    BOOTSTRAP,
    FakeContacts,
    GatewayDb,
    Harness,
    ManualClock,
    always_ready,
    answers,
    contact,
    fails_with,
    harness,
)

CONTACT_ID = "01900000-0000-7000-8000-0000000000c1"


async def _stored_bytes(gateway_db: GatewayDb) -> bytes:
    """Everything the idempotency store holds, as one blob to search."""
    async with await psycopg.AsyncConnection.connect(gateway_db.superuser_url) as conn:
        rows = await (
            await conn.execute(
                "SELECT coalesce(response_body, ''::bytea), response_headers::text"
                " FROM idempotency_keys"
            )
        ).fetchall()
    return b"".join(bytes(body) + headers.encode() for body, headers in rows)


async def test_a_new_api_keys_secret_never_reaches_the_idempotency_store(
    gw: Harness, gateway_db: GatewayDb
) -> None:
    _, admin = await gw.tenant()
    request = {"name": "ci", "scopes": ["contacts:read"]}
    async with gw.client(admin) as api:
        made = await api.post("/v1/api-keys", json=request, headers={"Idempotency-Key": "k1"})
        assert made.status_code == 201, made.text
        secret = made.json()["secret"]
        assert secret.startswith("trellis_")
        assert made.headers["location"] == f"/v1/api-keys/{made.json()['id']}"
        assert secret.encode() not in await _stored_bytes(gateway_db)

        again = await api.post("/v1/api-keys", json=request, headers={"Idempotency-Key": "k1"})
    # Not a second key, not the secret again: where the key is, and why there is no more.
    assert again.status_code == 409
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == made.headers["location"]
    assert "shown only once" in again.json()["detail"]
    assert secret not in again.text


async def test_idempotency_keys_are_scoped_to_the_calling_key(gw: Harness) -> None:
    tenant_id, first_admin = await gw.tenant()
    second_admin = await gw.key(tenant_id)
    request = {"name": "ci", "scopes": ["contacts:read"]}
    key = {"Idempotency-Key": "same-key"}
    async with gw.client(first_admin) as a, gw.client(second_admin) as b:
        ours = await a.post("/v1/api-keys", json=request, headers=key)
        theirs = await b.post("/v1/api-keys", json=request, headers=key)
    assert ours.status_code == theirs.status_code == 201
    assert ours.json()["id"] != theirs.json()["id"]
    assert "idempotent-replayed" not in theirs.headers


async def test_the_idempotency_key_travels_to_the_owning_service(
    gw: Harness, contacts: FakeContacts
) -> None:
    contacts.answers["CreateContact"] = answers(contact(CONTACT_ID))
    _, key = await gw.tenant(("contacts:write",))
    async with gw.client(key) as api:
        made = await api.post(
            "/v1/contacts", json={"first_name": "Ada"}, headers={"Idempotency-Key": "ik-1"}
        )
    assert made.status_code == 201
    assert made.headers["location"] == f"/v1/contacts/{CONTACT_ID}"
    assert contacts.metadata[-1][idempotency.METADATA_KEY] == "ik-1"


async def test_a_claim_left_by_a_dead_gateway_is_taken_over_after_its_lease(
    gw: Harness, contacts: FakeContacts
) -> None:
    contacts.answers["CreateContact"] = answers(contact(CONTACT_ID))
    _, key = await gw.tenant(("contacts:write",))
    body = b'{"first_name": "Ada"}'
    caller = await gw.parts.verifier.verify(key)
    assert caller is not None
    # What a gateway that died mid-request leaves: a claim nobody will complete or release.
    fingerprint = request_hash("POST", "/v1/contacts", "", body)
    dead = await gw.parts.store.claim(caller, "ik-dead", fingerprint)
    assert dead.token is not None
    headers = {"Idempotency-Key": "ik-dead", "Content-Type": "application/json"}
    async with gw.client(key) as api:
        running = await api.post("/v1/contacts", content=body, headers=headers)
        assert running.status_code == 409
        gw.clock.advance(gw.settings.lease_seconds + 1)
        retried = await api.post("/v1/contacts", content=body, headers=headers)
    assert retried.status_code == 201
    assert contacts.metadata[-1][idempotency.METADATA_KEY] == "ik-dead"


@pytest.mark.parametrize(
    "value",
    ["Bearer ключ".encode(), b"Bearer \xff\xfe", b"Bearer " + BOOTSTRAP[:-1].encode() + b"\xe9"],
)
async def test_any_authorization_header_bytes_are_a_401(gw: Harness, value: bytes) -> None:
    async with gw.client() as anon:
        r = await anon.get("/v1/api-keys", headers={b"Authorization": value})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"


async def test_failed_authentications_are_limited_per_client_address(gw: Harness) -> None:
    _, known = await gw.tenant()
    _, unseen = await gw.tenant()
    async with gw.client(known, address="198.51.100.7") as same_address:
        assert (await same_address.get("/v1/api-keys")).status_code == 200
    burst = gw.parts.limiter.per_address.burst
    async with gw.client(address="198.51.100.7") as guesser:
        for _ in range(burst):
            r = await guesser.get("/v1/api-keys", headers={"Authorization": "Bearer trellis_x"})
            assert r.status_code == 401
        refused = await guesser.get("/v1/api-keys", headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
    # From that address a key verified before still works; one never seen waits its turn.
    async with gw.client(known, address="198.51.100.7") as same_address:
        assert (await same_address.get("/v1/api-keys")).status_code == 200
    async with gw.client(unseen, address="198.51.100.7") as same_address:
        assert (await same_address.get("/v1/api-keys")).status_code == 429
    async with gw.client(unseen, address="198.51.100.8") as elsewhere:
        assert (await elsewhere.get("/v1/api-keys")).status_code == 200
    gw.clock.advance(1 / gw.parts.limiter.per_address.rate)
    async with gw.client("trellis_still_wrong", address="198.51.100.7") as guesser:
        assert (await guesser.get("/v1/api-keys")).status_code == 401


async def test_the_platform_operator_manages_tenants_and_never_their_data(
    gw: Harness, contacts: FakeContacts
) -> None:
    contacts.answers["CreateContact"] = answers(contact(CONTACT_ID))
    tenant_id, _ = await gw.tenant()
    async with gw.client(BOOTSTRAP) as op:
        for method, path in [
            ("POST", "/v1/contacts"),
            ("GET", "/v1/contacts"),
            ("GET", f"/v1/contacts/{CONTACT_ID}"),
        ]:
            body = {"first_name": "Zero"} if method == "POST" else None
            r = await op.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
        made = await op.post(
            "/v1/api-keys", json={"tenant_id": tenant_id, "name": "k", "scopes": ["admin"]}
        )
        assert made.status_code == 201
        own = await op.post("/v1/api-keys", json={"name": "k", "scopes": ["admin"]})
        assert own.status_code == 400
        assert own.json()["errors"][0]["field"] == "api_key.tenant_id"
    assert contacts.metadata == []  # nothing reached the service


@pytest.mark.parametrize("depth", [65, 5_000, 200_000])
async def test_deeply_nested_json_is_a_400(gw: Harness, depth: int) -> None:
    _, admin = await gw.tenant()
    body = '{"name": ' + "[" * depth + "]" * depth + "}"
    async with gw.client(admin) as api:
        r = await api.post(
            "/v1/api-keys", content=body, headers={"Content-Type": "application/json"}
        )
    assert r.status_code == 400, r.text[:200]
    assert r.json()["errors"][0]["field"] == "body"
    assert "64" in r.json()["detail"]


async def test_json_nested_within_the_bound_is_parsed(gw: Harness) -> None:
    _, admin = await gw.tenant()
    body = '{"name": ' + "[" * 63 + "]" * 63 + "}"
    async with gw.client(admin) as api:
        r = await api.post(
            "/v1/api-keys", content=body, headers={"Content-Type": "application/json"}
        )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "api_key.name"  # parsed: the type is wrong


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "", "application/xml"]
)
async def test_a_body_that_is_not_json_is_a_415(gw: Harness, content_type: str) -> None:
    _, admin = await gw.tenant()
    headers = {"Content-Type": content_type} if content_type else {}
    async with gw.client(admin) as api:
        r = await api.post("/v1/api-keys", content=b'{"name": "x"}', headers=headers)
    assert r.status_code == 415
    assert r.json()["errors"][0]["field"] == "Content-Type"


async def test_json_media_types_with_parameters_are_accepted(gw: Harness) -> None:
    _, admin = await gw.tenant()
    async with gw.client(admin) as api:
        for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
            r = await api.post(
                "/v1/api-keys",
                content=json.dumps({"name": "x", "scopes": ["admin"]}),
                headers={"Content-Type": content_type},
            )
            assert r.status_code == 201, (content_type, r.text)


async def test_if_match_star_needs_an_existing_resource_and_is_not_an_etag(
    gw: Harness, contacts: FakeContacts
) -> None:
    seen: list[str] = []

    async def update(request: Message, _: Any) -> Message:
        assert isinstance(request, contacts_pb2.UpdateContactRequest)
        seen.append(request.etag)
        return contact(request.id, etag="e2")

    contacts.answers["UpdateContact"] = update
    _, key = await gw.tenant(("contacts:write",))
    star = {"If-Match": "*"}
    async with gw.client(key) as api:
        r = await api.patch(f"/v1/contacts/{CONTACT_ID}", json={"first_name": "B"}, headers=star)
        assert r.status_code == 200
        assert seen == [""]  # no etag condition: "*" matches whatever version exists
        contacts.answers["UpdateContact"] = fails_with(NotFound("contact", CONTACT_ID))
        r = await api.patch(f"/v1/contacts/{CONTACT_ID}", json={"first_name": "B"}, headers=star)
        assert r.status_code == 412
        contacts.answers["DeleteContact"] = fails_with(NotFound("contact", CONTACT_ID))
        assert (await api.delete(f"/v1/contacts/{CONTACT_ID}", headers=star)).status_code == 412
        assert (await api.delete(f"/v1/contacts/{CONTACT_ID}")).status_code == 404


async def test_if_match_on_a_resource_without_etags_cannot_match(gw: Harness) -> None:
    _, admin = await gw.tenant()
    async with gw.client(admin) as api:
        made = await api.post("/v1/api-keys", json={"name": "x", "scopes": ["admin"]})
        path = f"/v1/api-keys/{made.json()['id']}"
        assert (await api.delete(path, headers={"If-Match": '"abc"'})).status_code == 412
        assert (await api.delete(path, headers={"If-Match": "*"})).status_code == 204
        assert (await api.delete("/v1/api-keys/nope", headers={"If-Match": "*"})).status_code == 412


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (StaleEtag("contact"), 412),
        (idempotency.key_reused(), 422),
    ],
)
async def test_failed_preconditions_are_told_apart_by_their_details(
    gw: Harness, contacts: FakeContacts, error: Any, status: int
) -> None:
    contacts.answers["UpdateContact"] = fails_with(error)
    _, key = await gw.tenant(("contacts:write",))
    async with gw.client(key) as api:
        r = await api.patch(
            f"/v1/contacts/{CONTACT_ID}", json={"first_name": "B"}, headers={"If-Match": '"e0"'}
        )
    assert r.status_code == status


async def test_creates_answer_201_with_location_other_posts_200(gw: Harness) -> None:
    async with gw.client(BOOTSTRAP) as op:
        made = await op.post("/v1/tenants", json={"name": "t"})
    assert made.status_code == 201
    assert made.headers["location"] == f"/v1/tenants/{made.json()['id']}"


async def test_readyz_lists_the_backends_and_refuses_with_retry_after(
    pool: db.Pool, gateway_db: GatewayDb, clock: ManualClock, contacts: FakeContacts
) -> None:
    async def stopping() -> bool:
        return False

    for ready, status in ((always_ready, 200), (stopping, 503)):
        gw = harness(pool, gateway_db.app_url, clock, ready=ready)
        try:
            async with gw.client() as anon:
                r = await anon.get("/readyz")
        finally:
            await gw.close()
        assert r.status_code == status
        assert r.json()["backends"] == {"contacts": "NOT_SERVING"}  # nothing watched it yet
        assert ("retry-after" in r.headers) is (status == 503)
