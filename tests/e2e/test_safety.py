"""Safe retries, tenant isolation and authentication at the gateway."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import psycopg
import pytest

from tests.helpers import Platform, Tenant, new_tenant


def _email() -> str:
    return f"grace.{uuid.uuid4().hex[:10]}@example.com"


async def _count_tagged(api: httpx.AsyncClient, tag: str) -> int:
    r = await api.get("/v1/contacts", params={"tag": tag, "page_size": "500"})
    assert r.status_code == 200, r.text
    return len(r.json()["contacts"])


async def test_idempotency_key_replays_and_rejects_another_body(api: httpx.AsyncClient) -> None:
    tag = f"idem-{uuid.uuid4().hex[:8]}"
    key = {"Idempotency-Key": str(uuid.uuid4())}
    payload = {"first_name": "Grace", "emails": [_email()], "tags": [tag]}

    first = await api.post("/v1/contacts", json=payload, headers=key)
    second = await api.post("/v1/contacts", json=payload, headers=key)
    assert first.status_code == second.status_code == 201
    assert first.content == second.content
    assert second.headers["idempotent-replayed"] == "true"
    assert await _count_tagged(api, tag) == 1

    other = await api.post("/v1/contacts", json={**payload, "first_name": "Hopper"}, headers=key)
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert await _count_tagged(api, tag) == 1


async def test_concurrent_retries_with_one_key_create_one_contact(api: httpx.AsyncClient) -> None:
    tag = f"race-{uuid.uuid4().hex[:8]}"
    key = {"Idempotency-Key": str(uuid.uuid4())}
    payload = {"first_name": "Race", "emails": [_email()], "tags": [tag]}
    answers = await asyncio.gather(
        *(api.post("/v1/contacts", json=payload, headers=key) for _ in range(8))
    )
    # One runs; the others either replay it or are told it is still running (409).
    assert {r.status_code for r in answers} <= {201, 409}
    assert await _count_tagged(api, tag) == 1


async def test_idempotency_keys_are_per_tenant(tenant: Tenant, other_tenant: Tenant) -> None:
    key = {"Idempotency-Key": "shared-key"}
    async with tenant.client() as a, other_tenant.client() as b:
        ra = await a.post(
            "/v1/contacts", json={"first_name": "A", "emails": [_email()]}, headers=key
        )
        rb = await b.post(
            "/v1/contacts", json={"first_name": "B", "emails": [_email()]}, headers=key
        )
    assert ra.status_code == rb.status_code == 201
    assert ra.json()["id"] != rb.json()["id"]


async def test_idempotency_keys_are_per_calling_key(tenant: Tenant) -> None:
    key = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}
    payload = {"first_name": "Same", "tags": [f"per-key-{uuid.uuid4().hex[:8]}"]}
    async with tenant.client() as admin:
        second = await admin.post(
            "/v1/api-keys", json={"name": "second", "scopes": ["contacts:write"]}
        )
        assert second.status_code == 201
        first_answer = await admin.post("/v1/contacts", json=payload, headers=key)
    async with tenant.client(second.json()["secret"]) as other:
        other_answer = await other.post("/v1/contacts", json=payload, headers=key)
    # Another key of the same tenant is another caller: its own contact, not a replay.
    assert first_answer.status_code == other_answer.status_code == 201
    assert first_answer.json()["id"] != other_answer.json()["id"]
    assert "idempotent-replayed" not in other_answer.headers


async def _gateway_idempotency_rows(platform: Platform) -> list[tuple[str, bytes]]:
    owner_url = platform.stack.urls["gateway"][0]
    async with await psycopg.AsyncConnection.connect(owner_url) as conn:
        cur = await conn.execute(
            "SELECT key, coalesce(response_body, ''::bytea) || convert_to("
            "coalesce(response_headers::text, ''), 'UTF8') FROM idempotency_keys"
        )
        return [(k, bytes(b)) for k, b in await cur.fetchall()]


async def test_a_new_keys_secret_is_never_stored_nor_replayed(
    tenant: Tenant, platform: Platform
) -> None:
    key = {"Idempotency-Key": f"new-key-{uuid.uuid4().hex}"}
    request = {"name": "ci", "scopes": ["contacts:read"]}
    async with tenant.client() as admin:
        made = await admin.post("/v1/api-keys", json=request, headers=key)
        assert made.status_code == 201, made.text
        secret = made.json()["secret"]
        rows = await _gateway_idempotency_rows(platform)
        assert key["Idempotency-Key"] in {k for k, _ in rows}
        assert not any(secret.encode() in stored for _, stored in rows)
        again = await admin.post("/v1/api-keys", json=request, headers=key)
    assert again.status_code == 409
    assert secret not in again.text
    assert again.headers["location"] == f"/v1/api-keys/{made.json()['id']}"


async def test_the_owning_service_answers_a_retry_the_gateway_lost_track_of(
    tenant: Tenant, platform: Platform
) -> None:
    key = f"lost-{uuid.uuid4().hex}"
    payload = {"first_name": "Once", "emails": [_email()]}
    async with tenant.client() as api:
        first = await api.post("/v1/contacts", json=payload, headers={"Idempotency-Key": key})
        assert first.status_code == 201
        # As if the gateway had died before storing the answer, and the lease had lapsed.
        async with await psycopg.AsyncConnection.connect(platform.stack.urls["gateway"][0]) as c:
            await c.execute("DELETE FROM idempotency_keys WHERE key = %s", (key,))
        again = await api.post("/v1/contacts", json=payload, headers={"Idempotency-Key": key})
    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]


async def test_other_tenants_ids_are_not_found_anywhere(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    tag = f"iso-{uuid.uuid4().hex[:8]}"
    async with tenant.client() as a, other_tenant.client() as b:
        mine = await a.post(
            "/v1/contacts", json={"first_name": "Mine", "emails": [_email()], "tags": [tag]}
        )
        company = await a.post("/v1/companies", json={"name": "Mine Inc"})
        assert mine.status_code == company.status_code == 201
        cid, coid = mine.json()["id"], company.json()["id"]
        probes = [
            b.get(f"/v1/contacts/{cid}"),
            b.patch(f"/v1/contacts/{cid}", json={"first_name": "Stolen"}),
            b.delete(f"/v1/contacts/{cid}"),
            b.get(f"/v1/companies/{coid}"),
            b.patch(f"/v1/companies/{coid}", json={"name": "Stolen"}),
            b.delete(f"/v1/companies/{coid}"),
        ]
        for answer in await asyncio.gather(*probes):
            assert answer.status_code == 404, answer.text
        assert await _count_tagged(b, tag) == 0
        listed = await b.get("/v1/companies", params={"page_size": "500"})
        assert coid not in {c["id"] for c in listed.json()["companies"]}
        # B cannot link A's company either: to B it does not exist.
        linked = await b.post("/v1/contacts", json={"first_name": "X", "company_id": coid})
        assert linked.status_code == 400
        # And A's record is untouched.
        still = await a.get(f"/v1/contacts/{cid}")
        assert still.json()["first_name"] == "Mine"
        assert still.json()["version"] == "1"


async def test_missing_wrong_and_revoked_keys_are_401(tenant: Tenant, platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=tenant.gateway_url) as anon:
        assert (await anon.get("/v1/contacts")).status_code == 401
        bad = await anon.get("/v1/contacts", headers={"Authorization": "Bearer trellis_nope"})
        assert bad.status_code == 401
        assert bad.headers["content-type"] == "application/problem+json"

    async with tenant.client() as admin:
        made = await admin.post("/v1/api-keys", json={"name": "temp", "scopes": ["contacts:read"]})
        assert made.status_code == 201, made.text
        temp = made.json()
        assert temp["secret"].startswith("trellis_")
        listed = await admin.get("/v1/api-keys")
        shown = {k["id"]: k for k in listed.json()["api_keys"]}
        assert shown[temp["id"]]["secret"] == ""  # shown once, never again
        async with tenant.client(temp["secret"]) as temp_client:
            assert (await temp_client.get("/v1/contacts")).status_code == 200
            assert (await admin.delete(f"/v1/api-keys/{temp['id']}")).status_code == 204
            assert (await temp_client.get("/v1/contacts")).status_code == 401


async def test_missing_scope_is_403(platform: Platform) -> None:
    reader = new_tenant(platform, ["contacts:read"])
    async with reader.client() as client:
        assert (await client.get("/v1/contacts")).status_code == 200
        denied = await client.post("/v1/contacts", json={"first_name": "No"})
        assert denied.status_code == 403
        assert "contacts:write" in denied.json()["detail"]
        # A tenant key can never act as the platform operator.
        assert (await client.post("/v1/tenants", json={"name": "x"})).status_code == 403


async def test_tenant_admin_cannot_mint_keys_for_another_tenant(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    async with tenant.client() as admin:
        r = await admin.post(
            "/v1/api-keys",
            json={"name": "x", "scopes": ["admin"], "tenant_id": other_tenant.id},
        )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "api_key.tenant_id"


async def test_rate_limit_is_429_with_retry_after(tenant: Tenant) -> None:
    # Burst 40, 20/s (tests/helpers.py LIMITS): 80 requests at once overrun it.
    async with tenant.client() as client:
        answers = await asyncio.gather(*(client.get("/v1/contacts") for _ in range(80)))
    limited = [r for r in answers if r.status_code == 429]
    assert limited, "no request was rate limited"
    assert all(r.status_code in (200, 429) for r in answers)
    sample = limited[0]
    assert int(sample.headers["retry-after"]) >= 1
    assert sample.headers["ratelimit-remaining"] == "0"
    assert sample.headers["content-type"] == "application/problem+json"
    ok = next(r for r in answers if r.status_code == 200)
    assert int(ok.headers["ratelimit-limit"]) == 40


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"Basic abc",
        b"Bearer",
        b"Bearer trellis_0123456789abcdef_x",
        "Bearer ключ".encode(),
        b"Bearer \xff\xfe\xfd",
        b"Bearer trellis_0123456789abcdef_" + "é".encode() * 22,
    ],
)
async def test_malformed_authorization_is_401(tenant: Tenant, header: bytes) -> None:
    async with httpx.AsyncClient(base_url=tenant.gateway_url) as anon:
        r = await anon.get("/v1/contacts", headers={b"Authorization": header})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"


async def test_the_bootstrap_key_administers_tenants_and_never_acts_in_one(
    platform: Platform,
) -> None:
    operator = {"Authorization": f"Bearer {platform.stack.bootstrap_key}"}
    async with httpx.AsyncClient(base_url=platform.stack.gateway_url, headers=operator) as op:
        for method, path in [("POST", "/v1/contacts"), ("GET", "/v1/contacts")]:
            body = {"first_name": "Tenant zero"} if method == "POST" else None
            r = await op.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
        tenant = await op.post("/v1/tenants", json={"name": "by the operator"})
        assert tenant.status_code == 201
        key = await op.post(
            "/v1/api-keys",
            json={"tenant_id": tenant.json()["id"], "name": "k", "scopes": ["admin"]},
        )
        assert key.status_code == 201
