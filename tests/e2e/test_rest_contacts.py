"""Contacts through the gateway's REST API: the round trip a client app makes."""

from __future__ import annotations

import uuid

import httpx

from tests.helpers import Tenant


def _email() -> str:
    return f"ada.{uuid.uuid4().hex[:10]}@example.com"


async def test_create_get_update_delete(api: httpx.AsyncClient) -> None:
    email = _email()
    created = await api.post(
        "/v1/contacts",
        json={"first_name": "Ada", "last_name": "Lovelace", "emails": [email], "tags": ["vip"]},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    cid = body["id"]
    assert body["emails"] == [email]
    assert body["version"] == "1"  # int64 is a string in proto3 JSON
    assert created.headers["etag"] == f'"{body["etag"]}"'
    assert created.headers["x-request-id"]
    assert created.headers["location"] == f"/v1/contacts/{cid}"

    got = await api.get(f"/v1/contacts/{cid}")
    assert got.status_code == 200
    assert got.json()["first_name"] == "Ada"
    etag = got.headers["etag"]

    stale = await api.patch(
        f"/v1/contacts/{cid}", json={"first_name": "Augusta"}, headers={"If-Match": '"stale"'}
    )
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"

    updated = await api.patch(
        f"/v1/contacts/{cid}", json={"first_name": "Augusta"}, headers={"If-Match": etag}
    )
    assert updated.status_code == 200, updated.text
    after = updated.json()
    assert after["first_name"] == "Augusta"
    assert after["last_name"] == "Lovelace"  # not in the body, so not in the mask: unchanged
    assert after["version"] == "2"
    assert updated.headers["etag"] != etag

    # The old etag is now stale for delete too.
    refused = await api.delete(f"/v1/contacts/{cid}", headers={"If-Match": etag})
    assert refused.status_code == 412
    deleted = await api.delete(f"/v1/contacts/{cid}", headers={"If-Match": updated.headers["etag"]})
    assert deleted.status_code == 204
    assert (await api.get(f"/v1/contacts/{cid}")).status_code == 404


async def test_list_pages_through_everything_once(api: httpx.AsyncClient) -> None:
    tag = f"batch-{uuid.uuid4().hex[:8]}"
    ids = []
    for i in range(7):
        r = await api.post(
            "/v1/contacts", json={"first_name": f"P{i}", "emails": [_email()], "tags": [tag]}
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])

    seen: list[str] = []
    pages = 0
    token = ""
    while True:
        params = {"page_size": "3", "tag": tag} | ({"page_token": token} if token else {})
        page = await api.get("/v1/contacts", params=params)
        assert page.status_code == 200, page.text
        pages += 1
        seen += [c["id"] for c in page.json()["contacts"]]
        token = page.json()["next_page_token"]
        if not token:
            break
    assert pages == 3
    assert seen == sorted(ids, reverse=True)  # newest first, each exactly once


async def test_duplicate_email_names_the_existing_contact(api: httpx.AsyncClient) -> None:
    email = _email()
    first = await api.post("/v1/contacts", json={"first_name": "One", "emails": [email]})
    assert first.status_code == 201
    again = await api.post("/v1/contacts", json={"first_name": "Two", "emails": [email.upper()]})
    assert again.status_code == 409
    assert first.json()["id"] in again.json()["detail"]


async def test_companies_round_trip(api: httpx.AsyncClient) -> None:
    made = await api.post("/v1/companies", json={"name": "Acme", "domain": "acme.example"})
    assert made.status_code == 201, made.text
    company_id = made.json()["id"]
    contact = await api.post(
        "/v1/contacts", json={"first_name": "Wile", "emails": [_email()], "company_id": company_id}
    )
    assert contact.status_code == 201, contact.text
    listed = await api.get("/v1/contacts", params={"company_id": company_id})
    assert [c["id"] for c in listed.json()["contacts"]] == [contact.json()["id"]]
    assert (await api.delete(f"/v1/companies/{company_id}")).status_code == 204


async def test_openapi_and_docs_need_no_key(tenant: Tenant) -> None:
    async with httpx.AsyncClient(base_url=tenant.gateway_url) as anon:
        spec = await anon.get("/v1/openapi.json")
        assert spec.status_code == 200
        assert "/v1/contacts/{id}" in spec.json()["paths"]
        docs = await anon.get("/docs")
        assert docs.status_code == 200
        assert "/v1/contacts" in docs.text
        assert (await anon.get("/healthz")).status_code == 200
        assert (await anon.get("/readyz")).status_code == 200
        assert (await anon.get("/v1/contacts")).status_code == 401


async def test_if_match_star_needs_the_contact_to_exist(api: httpx.AsyncClient) -> None:
    made = await api.post("/v1/contacts", json={"first_name": "Ada"})
    assert made.status_code == 201
    where = made.headers["location"]
    star = {"If-Match": "*"}
    updated = await api.patch(where, json={"first_name": "Augusta"}, headers=star)
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == "2"
    assert (await api.delete(where, headers=star)).status_code == 204
    gone = await api.patch(where, json={"first_name": "Again"}, headers=star)
    assert gone.status_code == 412
    assert gone.headers["content-type"] == "application/problem+json"
    assert (await api.delete(where, headers=star)).status_code == 412
