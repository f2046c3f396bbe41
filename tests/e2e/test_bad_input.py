"""Bad input gets a 4xx problem+json naming the field, never a 5xx, and writes nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.helpers import Tenant

LONG = "x" * 201

# (case id, raw body or JSON, the field the problem must name)
BODIES: list[tuple[str, Any, str]] = [
    ("not json", b'{"first_name": ', "body"),
    ("array body", [1, 2], "body"),
    ("string body", "Ada", "body"),
    ("wrong type", {"first_name": 12}, "first_name"),
    ("unknown field", {"first_name": "Ada", "nickname": "A"}, "nickname"),
    ("over-long name", {"first_name": LONG}, "first_name"),
    ("too many emails", {"emails": [f"a{i}@example.com" for i in range(11)]}, "emails"),
    ("emails not a list", {"emails": "a@example.com"}, "emails"),
    ("bad email", {"emails": ["not-an-email"]}, "emails"),
    ("bad phone", {"first_name": "Ada", "phones": ["call me"]}, "phones"),
    ("bad enum", {"first_name": "Ada", "lifecycle_stage": "ROYALTY"}, "lifecycle_stage"),
    (
        "unknown custom field",
        {"first_name": "Ada", "custom_fields": {"tier": "gold"}},
        "custom_fields",
    ),
    ("nothing to name the contact by", {"tags": ["x"]}, ""),
    ("too many tags", {"first_name": "Ada", "tags": [f"t{i}" for i in range(51)]}, "tags"),
]


async def _total(client: httpx.AsyncClient) -> int:
    r = await client.get("/v1/contacts", params={"page_size": "500"})
    assert r.status_code == 200
    return len(r.json()["contacts"])


def _assert_problem(r: httpx.Response, status: int, field: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == status
    assert problem["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    if field:
        named = [e["field"] for e in problem.get("errors", [])]
        assert any(field in f for f in named), f"{field!r} not named in {named}"


@pytest.mark.parametrize(("case", "body", "field"), BODIES, ids=[c for c, _, _ in BODIES])
async def test_bad_create_bodies(tenant: Tenant, case: str, body: Any, field: str) -> None:
    async with tenant.client() as client:
        content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
        r = await client.post(
            "/v1/contacts", content=content, headers={"Content-Type": "application/json"}
        )
        _assert_problem(r, 400, field)
        assert await _total(client) == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"page_token": "!!not-a-token!!"}, "page_token"),
        ({"page_size": "abc"}, "page_size"),
        ({"page_size": "501"}, "page_size"),
        ({"page_size": "-1"}, "page_size"),
        ({"updated_after": "yesterday"}, "updated_after"),
        ({"colour": "blue"}, "colour"),
        ({"lifecycle_stage": "NOPE"}, "lifecycle_stage"),
    ],
)
async def test_bad_list_queries(api: httpx.AsyncClient, query: dict[str, str], field: str) -> None:
    _assert_problem(await api.get("/v1/contacts", params=query), 400, field)


async def test_oversized_body_is_413(api: httpx.AsyncClient) -> None:
    huge = b'{"first_name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = await api.post("/v1/contacts", content=huge, headers={"Content-Type": "application/json"})
    _assert_problem(r, 413, "")
    assert await _total(api) == 0


async def test_bad_update_writes_nothing(api: httpx.AsyncClient) -> None:
    made = await api.post("/v1/contacts", json={"first_name": "Ada"})
    cid = made.json()["id"]
    bad = await api.patch(f"/v1/contacts/{cid}", json={"first_name": "B", "emails": ["nope"]})
    _assert_problem(bad, 400, "emails")
    after = (await api.get(f"/v1/contacts/{cid}")).json()
    assert after["first_name"] == "Ada"
    assert after["version"] == "1"


async def test_unknown_routes_and_methods(api: httpx.AsyncClient) -> None:
    _assert_problem(await api.get("/v1/nothing-here"), 404, "")
    r = await api.put("/v1/contacts", json={})
    _assert_problem(r, 405, "")
    assert "GET" in r.headers["allow"]


async def test_bad_ids_are_404_not_500(api: httpx.AsyncClient) -> None:
    for probe in ("not-a-uuid", "00000000-0000-0000-0000-000000000000", "%00", "x" * 64):
        r = await api.get(f"/v1/contacts/{probe}")
        assert r.status_code in (400, 404), (probe, r.text)
    _assert_problem(await api.get("/v1/contacts/" + "x" * 65), 400, "id")


async def test_methods_no_route_knows_are_problem_json(api: httpx.AsyncClient) -> None:
    for method in ("OPTIONS", "TRACE"):
        r = await api.request(method, "/v1/contacts")
        _assert_problem(r, 405, "")


@pytest.mark.parametrize("depth", [65, 100_000])
async def test_deeply_nested_json_is_a_400(api: httpx.AsyncClient, depth: int) -> None:
    body = '{"custom_fields": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    r = await api.post("/v1/contacts", content=body, headers={"Content-Type": "application/json"})
    _assert_problem(r, 400, "body")
    assert await _total(api) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_that_is_not_json_is_a_415(api: httpx.AsyncClient, content_type: str) -> None:
    r = await api.post(
        "/v1/contacts", content=b'{"first_name": "Ada"}', headers={"Content-Type": content_type}
    )
    _assert_problem(r, 415, "Content-Type")
    assert await _total(api) == 0


async def test_if_match_with_several_tags_is_a_400(api: httpx.AsyncClient) -> None:
    made = await api.post("/v1/contacts", json={"first_name": "Ada"})
    r = await api.patch(
        f"/v1/contacts/{made.json()['id']}",
        json={"first_name": "B"},
        headers={"If-Match": '"a", "b"'},
    )
    _assert_problem(r, 400, "If-Match")


async def _raw(tenant: Tenant, head: bytes) -> tuple[int, bytes]:
    host, port = tenant.gateway_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    ("case", "headers"),
    [
        ("a 1 MB header", [b"X-Big: " + b"a" * 1_048_576 + b"\r\n"]),
        ("an 8 MB header", [b"X-Big: " + b"a" * 8 * 1_048_576 + b"\r\n"]),
        ("10,000 headers", [b"X-%d: a\r\n" % i for i in range(10_000)]),
    ],
)
async def test_oversized_request_heads_are_431(
    tenant: Tenant, case: str, headers: list[bytes]
) -> None:
    auth = b"Authorization: Bearer " + tenant.key.encode() + b"\r\n"
    head = b"GET /v1/contacts HTTP/1.1\r\nHost: gw\r\n" + auth + b"".join(headers) + b"\r\n"
    status, body = await _raw(tenant, head)
    assert status == 431, case
    assert json.loads(body)["status"] == 431
