"""What the gateway publishes about itself, checked against the running stack: the /docs explorer
and its assets, real exchanges against the OpenAPI document (openapi-core), and a real event
consumed with nothing but the AsyncAPI document."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import httpx
import jsonschema
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.helpers import Platform, Tenant
from trellis_gateway.asyncapi import build_asyncapi

_CONTENT_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}


class _Links(HTMLParser):
    """Every URL an HTML page loads or links to, and its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = [v for k, v in attrs if k in ("src", "href") and v]
        self.urls += found
        if tag == "script" and not found:
            self.inline_scripts += 1


async def test_docs_page_serves_every_asset_and_names_no_external_host(
    api: httpx.AsyncClient,
) -> None:
    page = await api.get("/docs", headers={"Authorization": ""})  # no key needed
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    links = _Links()
    links.feed(page.text)
    assert links.inline_scripts == 0  # the CSP would block them
    assert "<code>GET /v1/contacts</code>" in page.text  # listed for clients that run no script
    assert {"/v1/openapi.json", "/v1/asyncapi.json"} <= set(links.urls)
    assets = [u for u in links.urls if u.startswith("/docs/")]
    assert {"/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/start.js"} <= set(assets)
    for url in links.urls:
        assert re.match(r"/[^/]", url), url  # this host only
        got = await api.get(url)
        assert got.status_code == 200, url
        expected = _CONTENT_TYPES.get(url[url.rfind(".") :], "application/json")
        assert got.headers["content-type"].startswith(expected), (url, got.headers)
    start = (await api.get("/docs/start.js")).text
    # The page and its script name no other host (the vendor's files name some in strings they
    # do not fetch; the CSP holds the browser to this host whatever they contain).
    for ours in (page.text, start):
        assert not re.search(r"//[a-z0-9-]+\.[a-z]", ours), ours
    assert "validatorUrl: null" in start  # no badge from an outside validator
    assert "/v1/openapi.json" in start
    missing = await api.get("/docs/swagger-ui.js.map")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_asyncapi_document_is_served(api: httpx.AsyncClient) -> None:
    served = await api.get("/v1/asyncapi.json", headers={"Authorization": ""})
    assert served.status_code == 200
    assert served.json() == build_asyncapi()


@dataclass
class _Request:
    """An httpx request as openapi-core reads one."""

    request: httpx.Request
    parameters: RequestParameters = field(init=False)

    def __post_init__(self) -> None:
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(self.request.url.params.multi_items())),
            header=Headers(dict(self.request.headers)),
            cookie=ImmutableMultiDict(),
        )

    @property
    def host_url(self) -> str:
        return f"{self.request.url.scheme}://{self.request.url.netloc.decode()}"

    @property
    def path(self) -> str:
        return self.request.url.path

    @property
    def method(self) -> str:
        return self.request.method.lower()

    @property
    def body(self) -> bytes | None:
        return self.request.content or None

    @property
    def content_type(self) -> str:
        return str(self.request.headers.get("content-type", ""))


@dataclass
class _Response:
    """An httpx response as openapi-core reads one."""

    response: httpx.Response

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def content_type(self) -> str:
        return str(self.response.headers.get("content-type", ""))

    @property
    def headers(self) -> Headers:
        return Headers(dict(self.response.headers))

    @property
    def data(self) -> bytes:
        return self.response.content


async def test_real_exchanges_match_the_openapi_document(api: httpx.AsyncClient) -> None:
    # Problem documents are JSON too.
    config = Config(extra_media_type_deserializers={"application/problem+json": json.loads})
    spec = OpenAPI.from_dict((await api.get("/v1/openapi.json")).json(), config=config)
    checked: list[int] = []

    async def exchange(method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await api.request(method, url, **kwargs)
        request = _Request(response.request)
        spec.validate_request(request)
        spec.validate_response(request, _Response(response))
        checked.append(response.status_code)
        return response

    email = f"ada.{uuid.uuid4().hex[:8]}@example.com"
    made = await exchange(
        "POST",
        "/v1/contacts",
        json={"first_name": "Ada", "emails": [email], "lifecycle_stage": "LIFECYCLE_STAGE_LEAD"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    contact = made.json()
    await exchange("GET", f"/v1/contacts/{contact['id']}")
    await exchange("GET", "/v1/contacts", params={"page_size": "2"})
    await exchange(
        "PATCH",
        f"/v1/contacts/{contact['id']}",
        json={"last_name": "Lovelace", "owner_id": None},
        headers={"If-Match": made.headers["etag"]},
    )
    await exchange("PATCH", f"/v1/contacts/{contact['id']}", json={}, headers={"If-Match": "stale"})
    await exchange("POST", "/v1/contacts", json={"first_name": "Bob", "emails": [email]})
    await exchange("POST", "/v1/companies", json={"name": "Acme", "size": 12})
    await exchange("GET", f"/v1/contacts/{uuid.uuid4()}")
    await exchange("GET", "/v1/field-definitions", params={"object_type": "OBJECT_TYPE_CONTACT"})
    await exchange("GET", "/v1/api-keys")
    await exchange("DELETE", f"/v1/contacts/{contact['id']}")
    unauthenticated = await api.get("/v1/contacts", headers={"Authorization": "Bearer nope"})
    spec.validate_response(_Request(unauthenticated.request), _Response(unauthenticated))
    assert sorted({*checked, unauthenticated.status_code}) == [200, 201, 204, 401, 404, 409, 412]


async def test_an_event_is_consumed_with_the_asyncapi_document_alone(
    platform: Platform, tenant: Tenant, api: httpx.AsyncClient
) -> None:
    doc = (await api.get("/v1/asyncapi.json")).json()
    # A partner's view: find the channel of the event it wants, fill in its tenant id.
    channel = next(
        c for c in doc["channels"].values() if c["title"] == "crm.contacts.contact.created.v1"
    )
    subject = channel["address"].replace("{tenant_id}", tenant.id)
    message = doc["components"]["messages"][
        channel["messages"]["ContactCreated"]["$ref"].rsplit("/", 1)[1]
    ]
    headers_schema = {
        "allOf": [
            doc["components"]["schemas"]["CloudEventHeaders"],
            message["headers"]["allOf"][1],
        ]
    }
    payload_schema = doc["components"]["schemas"][message["payload"]["$ref"].rsplit("/", 1)[1]]

    nc = await nats.connect(platform.stack.nats_url)
    try:
        sub = await nc.jetstream().subscribe(
            subject, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        )
        made = await api.post("/v1/contacts", json={"first_name": "Grace", "tags": ["docs"]})
        assert made.status_code == 201, made.text
        msg = await sub.next_msg(timeout=20)
    finally:
        await nc.close()

    headers = msg.headers or {}
    checker = jsonschema.FormatChecker()
    jsonschema.validate(headers, headers_schema, format_checker=checker)
    data = json.loads(msg.data)
    jsonschema.validate(data, payload_schema, format_checker=checker)
    assert headers["ce-dataschema"] == payload_schema["$id"]
    assert headers["ce-subject"] == data["contact"]["id"] == made.json()["id"]
    assert headers["ce-recordversion"] == data["contact"]["version"] == "1"
