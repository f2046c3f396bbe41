"""The OpenAPI 3.1 document generated from the descriptors: valid, complete, and faithful to the
proto3 JSON mapping the gateway speaks."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import ServiceDescriptor
from openapi_spec_validator import validate

from crm.contacts.v1 import contacts_pb2
from crm.gateway.v1 import gateway_pb2
from trellis_gateway.openapi import (
    CONTACT,
    DEFAULT_DESCRIPTOR_SET,
    LICENSE,
    build_openapi,
    load_comments,
)
from trellis_gateway.routes import IF_MATCH, RouteTable, build_routes

_F = descriptor_pb2.FieldDescriptorProto
# googleapis-common-protos has no type stubs; its google.api.http extension is all we need.
_HTTP = importlib.import_module("google.api.annotations_pb2").http

# Every field type once, to check the proto3 JSON mapping of each.
_KINDS: list[tuple[str, int, str]] = [
    ("d", _F.TYPE_DOUBLE, ""),
    ("f", _F.TYPE_FLOAT, ""),
    ("i32", _F.TYPE_INT32, ""),
    ("u32", _F.TYPE_UINT32, ""),
    ("i64", _F.TYPE_INT64, ""),
    ("u64", _F.TYPE_UINT64, ""),
    ("b", _F.TYPE_BOOL, ""),
    ("raw", _F.TYPE_BYTES, ""),
    ("mask", _F.TYPE_MESSAGE, ".google.protobuf.FieldMask"),
    ("attrs", _F.TYPE_MESSAGE, ".google.protobuf.Struct"),
    ("ttl", _F.TYPE_MESSAGE, ".google.protobuf.Duration"),
    ("maybe", _F.TYPE_MESSAGE, ".google.protobuf.Int32Value"),
    ("child", _F.TYPE_MESSAGE, ".crm.oastest.v1.Thing"),  # recursive
]


def _things_service() -> ServiceDescriptor:
    """crm.oastest.v1.ThingsService: a custom verb, an additional binding, a `*` body, an RPC
    name that ContactsService also has, and every scalar type."""
    for dependency in (field_mask_pb2, struct_pb2, duration_pb2, wrappers_pb2, empty_pb2):
        assert dependency.DESCRIPTOR.name  # imported, so in the pool before our file
    fdp = descriptor_pb2.FileDescriptorProto(
        name="crm/oastest/v1/things.proto",
        package="crm.oastest.v1",
        syntax="proto3",
        dependency=[
            "google/api/annotations.proto",
            "google/protobuf/field_mask.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/wrappers.proto",
            "google/protobuf/empty.proto",
        ],
    )
    thing = fdp.message_type.add(name="Thing")
    for number, (name, kind, type_name) in enumerate(_KINDS, start=1):
        field = thing.field.add(name=name, number=number, type=kind)
        field.label = _F.LABEL_OPTIONAL
        if type_name:
            field.type_name = type_name
    request = fdp.message_type.add(name="ArchiveThingRequest")
    request.field.add(name="id", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    request.field.add(name="reason", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)

    service = fdp.service.add(name="ThingsService")
    archive = service.method.add(
        name="ArchiveThing",
        input_type=".crm.oastest.v1.ArchiveThingRequest",
        output_type=".google.protobuf.Empty",
    )
    rule = archive.options.Extensions[_HTTP]
    rule.post, rule.body = "/v1/things/{id}:archive", "*"
    rule.additional_bindings.add(post="/v1/things/{id}:shelve", body="*")
    get = service.method.add(
        name="GetContact",  # same RPC name as ContactsService's
        input_type=".crm.oastest.v1.ArchiveThingRequest",
        output_type=".crm.oastest.v1.Thing",
    )
    get.options.Extensions[_HTTP].get = "/v1/things/{id}"

    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName(fdp.name)
    except KeyError:
        file = pool.AddSerializedFile(fdp.SerializeToString())
    return file.services_by_name["ThingsService"]


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return build_routes(
        [
            *contacts_pb2.DESCRIPTOR.services_by_name.values(),
            *gateway_pb2.DESCRIPTOR.services_by_name.values(),
            _things_service(),
        ]
    )


@pytest.fixture(scope="module")
def doc(table: RouteTable) -> dict[str, Any]:
    return build_openapi(
        table, title="Trellis CRM", version="1.2.3", server_url="https://crm.example.com"
    )


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["components"]["schemas"][name]
    return schema


def _params(op: dict[str, Any], doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    resolved = [_resolve(doc, p["$ref"]) if "$ref" in p else p for p in op["parameters"]]
    return {p["name"]: p for p in resolved}


def test_document_is_valid_openapi_31(doc: dict[str, Any]) -> None:
    validate(doc)  # raises on any violation
    assert doc["openapi"] == "3.1.0"
    info = doc["info"]
    assert (info["title"], info["version"]) == ("Trellis CRM", "1.2.3")
    assert info["license"] == LICENSE
    assert info["contact"] == CONTACT
    assert "/v1/asyncapi.json" in info["description"]
    assert doc["servers"] == [{"url": "https://crm.example.com", "description": "This gateway"}]


def test_validator_catches_what_we_rely_on(doc: dict[str, Any]) -> None:
    # The validator is this suite's oracle: check it rejects undeclared path params and bad refs.
    no_param = copy.deepcopy(doc)
    no_param["paths"]["/v1/contacts/{id}"]["get"]["parameters"] = []
    with pytest.raises(Exception, match="Path parameter 'id'"):
        validate(no_param)
    dangling = copy.deepcopy(doc)
    del dangling["components"]["schemas"]["crm.contacts.v1.LifecycleStage"]
    with pytest.raises(Exception, match="LifecycleStage"):
        validate(dangling)


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert "#/components/schemas/crm.contacts.v1.Contact" in refs
    for ref in refs:
        assert _resolve(doc, ref) is not None


def test_one_operation_per_route(table: RouteTable, doc: dict[str, Any]) -> None:
    ops = {(path, m): op for path, item in doc["paths"].items() for m, op in item.items()}
    assert len(ops) == len(table)
    op_ids = [op["operationId"] for op in ops.values()]
    assert len(op_ids) == len(set(op_ids))
    assert ops[("/v1/contacts/{id}", "get")]["operationId"] == "GetContact"
    assert ops[("/v1/contacts", "post")]["tags"] == ["ContactsService"]
    # Duplicate names (additional bindings, same RPC name in two services) stay unique.
    assert ops[("/v1/things/{id}:archive", "post")]["operationId"] == "ArchiveThing"
    assert ops[("/v1/things/{id}:shelve", "post")]["operationId"] == "ThingsService_ArchiveThing"
    assert ops[("/v1/things/{id}", "get")]["operationId"] == "ThingsService_GetContact"


def test_tags_describe_services(doc: dict[str, Any]) -> None:
    tags = {t["name"]: t for t in doc["tags"]}
    assert set(tags) == {"ContactsService", "TenantsService", "ApiKeysService", "ThingsService"}
    assert tags["ContactsService"]["description"].startswith("Contacts and companies of a tenant")


def test_comments_scope_and_security(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/contacts"]["post"]
    assert op["summary"] == "Creates a contact."
    assert op["description"].startswith("Creates a contact. Each email address belongs")
    assert "Requires the `contacts:write` scope." in op["description"]
    assert op["x-required-scope"] == "contacts:write"
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert "x-required-scope" not in doc["paths"]["/v1/things/{id}"]["get"]


def test_path_and_query_parameters(doc: dict[str, Any]) -> None:
    get = _params(doc["paths"]["/v1/contacts/{id}"]["get"], doc)
    assert get["id"]["in"] == "path"
    assert get["id"]["required"] is True
    # REQUIRED: the services trim strings, so a blank one is as missing as an empty one.
    assert get["id"]["schema"] == {
        "type": "string",
        "maxLength": 64,
        "minLength": 1,
        "pattern": r"\S",
    }
    assert get["id"]["description"] == "The contact id."

    listing = _params(doc["paths"]["/v1/contacts"]["get"], doc)
    assert list(listing) == [
        "page_size",
        "page_token",
        "tag",
        "company_id",
        "updated_after",
        "lifecycle_stage",
        "email",
    ]
    assert all(p["in"] == "query" and p["required"] is False for p in listing.values())
    # min_value / max_value
    assert listing["page_size"]["schema"] == {
        "type": "integer",
        "format": "int32",
        "minimum": 0,
        "maximum": 500,
    }
    assert listing["page_size"]["description"].startswith("Most contacts to return")
    assert listing["updated_after"]["schema"] == {"type": "string", "format": "date-time"}
    # A request takes the enum's names only: no open set, no null in a query.
    assert listing["lifecycle_stage"]["schema"] == {
        "$ref": "#/components/schemas/crm.contacts.v1.LifecycleStage"
    }
    stage = _resolve(doc, listing["lifecycle_stage"]["schema"]["$ref"])
    assert stage["type"] == "string"
    assert "LIFECYCLE_STAGE_CUSTOMER" in stage["enum"]


def test_update_mask_names_the_writable_paths(doc: dict[str, Any]) -> None:
    mask = _params(doc["paths"]["/v1/contacts/{id}"]["patch"], doc)["update_mask"]["schema"]
    assert mask["maxItems"] == 20
    names, entries = mask["items"]["anyOf"]
    assert names["enum"] == [
        "first_name",
        "last_name",
        "emails",
        "phones",
        "company_id",
        "owner_id",
        "tags",
        "lifecycle_stage",
        "custom_fields",
    ]  # no output-only field: naming one changes nothing
    assert entries == {"type": "string", "pattern": r"^custom_fields\..+$"}  # one map entry
    assert mask["items"]["maxLength"] == 64


def test_request_headers(doc: dict[str, Any]) -> None:
    post = _params(doc["paths"]["/v1/contacts"]["post"], doc)
    assert post["Idempotency-Key"]["in"] == "header"
    assert post["Idempotency-Key"]["schema"] == {"type": "string", "minLength": 1, "maxLength": 255}
    assert "If-Match" not in post
    patch = _params(doc["paths"]["/v1/contacts/{id}"]["patch"], doc)
    assert patch["If-Match"]["in"] == "header"
    # The etag field's bound, and the one entity tag (or *) the gateway accepts.
    assert patch["If-Match"]["schema"] == {
        "type": "string",
        "maxLength": 128,
        "pattern": f"^{IF_MATCH.pattern}$",
    }
    assert "Idempotency-Key" not in patch
    assert "etag" not in patch  # sent as If-Match, not as a query parameter
    assert list(patch) == ["id", "update_mask", "If-Match"]
    delete = _params(doc["paths"]["/v1/contacts/{id}"]["delete"], doc)
    assert set(delete) == {"id", "If-Match"}
    assert "If-Match" not in _params(doc["paths"]["/v1/contacts/{id}"]["get"], doc)


def _headers(doc: dict[str, Any], response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if "$ref" in response:
        response = _resolve(doc, response["$ref"])
    return {
        name: _resolve(doc, h["$ref"]) if "$ref" in h else h
        for name, h in response.get("headers", {}).items()
    }


def test_response_headers(doc: dict[str, Any]) -> None:
    rate = {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
    created = _headers(doc, doc["paths"]["/v1/contacts"]["post"]["responses"]["201"])
    assert set(created) == {"X-Request-Id", "ETag", "Location", "Idempotent-Replayed"} | rate
    assert created["ETag"]["required"] is True
    assert created["Location"]["required"] is False
    assert created["Idempotent-Replayed"]["required"] is False
    assert created["RateLimit-Remaining"]["schema"] == {"type": "integer", "minimum": 0}

    listed = _headers(doc, doc["paths"]["/v1/contacts"]["get"]["responses"]["200"])
    assert set(listed) == {"X-Request-Id"} | rate  # ListContactsResponse has no etag
    deleted = _headers(doc, doc["paths"]["/v1/contacts/{id}"]["delete"]["responses"]["204"])
    assert set(deleted) == {"X-Request-Id"} | rate

    responses = doc["paths"]["/v1/contacts/{id}"]["get"]["responses"]
    # Before authentication there is no caller to count for: no RateLimit headers.
    assert set(_headers(doc, responses["401"])) == {"X-Request-Id", "WWW-Authenticate"}
    assert set(_headers(doc, responses["403"])) == {"X-Request-Id"}
    limited = _headers(doc, responses["429"])
    assert set(limited) == {"X-Request-Id", "Retry-After"} | rate
    assert limited["Retry-After"]["required"] is True
    unavailable = _headers(doc, responses["503"])
    assert unavailable["Retry-After"]["required"] is False
    # A path naming no resource is refused before authentication, a missing record after it.
    assert all(not h["required"] for n, h in _headers(doc, responses["404"]).items() if n in rate)


def test_request_bodies(doc: dict[str, Any]) -> None:
    body = doc["paths"]["/v1/contacts"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/crm.contacts.v1.Contact-Input"
    }
    patch = doc["paths"]["/v1/contacts/{id}"]["patch"]["requestBody"]
    assert patch["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/crm.contacts.v1.Contact-Patch"
    }
    star = doc["paths"]["/v1/things/{id}:archive"]["post"]["requestBody"]
    ref = star["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/crm.oastest.v1.ArchiveThingRequest-Input"
    assert "requestBody" not in doc["paths"]["/v1/contacts/{id}"]["get"]


def test_what_the_server_writes(doc: dict[str, Any]) -> None:
    contact = _schema(doc, "crm.contacts.v1.Contact")
    props = contact["properties"]
    # Every field without presence is always printed; a message field may be absent.
    assert "create_time" not in contact["required"]
    assert set(contact["required"]) == set(props) - {"create_time", "update_time"}
    assert [n for n, p in props.items() if p.get("readOnly")] == [
        "id",
        "version",
        "etag",
        "create_time",
        "update_time",
    ]
    assert "additionalProperties" not in contact  # a newer server may add fields
    # A stage added later must not break a client generated from this document.
    assert props["lifecycle_stage"]["anyOf"] == [
        {"$ref": "#/components/schemas/crm.contacts.v1.LifecycleStage"},
        {"type": "string"},
    ]
    secret = _schema(doc, "crm.gateway.v1.ApiKey")["properties"]["secret"]
    assert secret["readOnly"] is True
    # The gateway leaves an empty `errors` out of a problem.
    assert "errors" not in _schema(doc, "crm.common.v1.Problem")["required"]


def test_what_a_client_writes(doc: dict[str, Any]) -> None:
    created = _schema(doc, "crm.contacts.v1.Company-Input")
    assert created["title"] == "CompanyInput"
    assert created["additionalProperties"] is False  # unknown fields are a 400
    assert created["required"] == ["name"]
    assert not {"id", "version", "etag", "create_time", "update_time"} & set(created["properties"])
    props = created["properties"]
    assert props["name"] == {
        "type": "string",
        "maxLength": 200,
        "minLength": 1,
        "pattern": r"\S",
        "description": "Display name.",
    }
    # proto3 JSON reads null as the default, so an optional field takes it; a required one not.
    assert props["industry"]["type"] == ["string", "null"]
    assert props["size"] == {
        "type": ["integer", "null"],
        "format": "int32",
        "minimum": 0,
        "description": "Number of employees.",
    }
    patched = _schema(doc, "crm.contacts.v1.Company-Patch")
    assert "required" not in patched  # a PATCH changes only the keys sent
    assert patched["properties"]["name"] == props["name"]  # but a name sent must not be blank

    definition = _schema(doc, "crm.contacts.v1.FieldDefinition-Input")
    assert definition["required"] == ["object_type", "name", "type"]
    assert definition["properties"]["object_type"] == {
        "$ref": "#/components/schemas/crm.contacts.v1.ObjectType",
        "not": {"const": "OBJECT_TYPE_UNSPECIFIED"},  # the zero value is "unset"
        "description": "The record type the field belongs to.",
    }
    stage = _schema(doc, "crm.contacts.v1.Contact-Input")["properties"]["lifecycle_stage"]
    assert stage["anyOf"] == [
        {"$ref": "#/components/schemas/crm.contacts.v1.LifecycleStage"},
        {"type": "null"},
    ]

    scopes = _schema(doc, "crm.gateway.v1.ApiKey-Input")["properties"]["scopes"]
    assert scopes["minItems"] == 1
    assert scopes["items"]["enum"] == ["admin", "contacts:read", "contacts:write"]
    assert "enum" not in _schema(doc, "crm.gateway.v1.ApiKey")["properties"]["scopes"]["items"]


def test_responses(doc: dict[str, Any]) -> None:
    get = doc["paths"]["/v1/contacts/{id}"]["get"]["responses"]
    assert get["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/crm.contacts.v1.Contact"
    }
    statuses = {"400", "401", "403", "404", "409", "413", "429", "503", "504"}
    assert set(get) == {"200"} | statuses
    assert set(doc["paths"]["/v1/contacts/{id}"]["patch"]["responses"]) == {"200", "412"} | statuses
    assert set(doc["paths"]["/v1/contacts"]["post"]["responses"]) == {"201", "422"} | statuses
    problem = _resolve(doc, get["404"]["$ref"])
    assert problem["description"] == "The resource does not exist."
    schema = problem["content"]["application/problem+json"]["schema"]
    assert _resolve(doc, schema["$ref"])["properties"]["errors"]["items"] == {
        "$ref": "#/components/schemas/crm.common.v1.FieldViolation"
    }
    deleted = doc["paths"]["/v1/contacts/{id}"]["delete"]["responses"]
    assert "200" not in deleted
    assert "content" not in deleted["204"]  # google.protobuf.Empty: no content


def test_message_schemas_follow_proto3_json(doc: dict[str, Any]) -> None:
    contact = _schema(doc, "crm.contacts.v1.Contact")
    assert contact["type"] == "object"
    assert contact["description"] == "A person the tenant does business with."
    props = contact["properties"]
    assert "first_name" in props  # snake_case, as the API writes it
    assert props["first_name"] == {"type": "string", "maxLength": 200, "description": "Given name."}
    assert props["emails"]["type"] == "array"
    assert props["emails"]["maxItems"] == 10
    assert props["emails"]["items"] == {"type": "string", "maxLength": 254}
    assert props["version"]["type"] == "string"  # int64
    assert props["version"]["format"] == "int64"
    assert props["create_time"]["format"] == "date-time"
    custom = props["custom_fields"]
    assert custom["type"] == "object"
    assert custom["additionalProperties"] == {}  # google.protobuf.Value: any JSON
    assert custom["maxProperties"] == 100
    assert custom["propertyNames"] == {"maxLength": 64}

    enum = _schema(doc, "crm.contacts.v1.FieldType")
    assert enum["enum"][0] == "FIELD_TYPE_UNSPECIFIED"
    assert "- `FIELD_TYPE_DATE`: A date as" in enum["description"]


def test_every_scalar_type(doc: dict[str, Any]) -> None:
    props = _schema(doc, "crm.oastest.v1.Thing")["properties"]
    assert props == {
        "d": {"type": "number", "format": "double"},
        "f": {"type": "number", "format": "float"},
        "i32": {"type": "integer", "format": "int32"},
        "u32": {"type": "integer", "format": "uint32", "minimum": 0},
        "i64": {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
        "u64": {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
        "b": {"type": "boolean"},
        "raw": {"type": "string", "contentEncoding": "base64"},
        "mask": {"type": "string", "description": "Comma-separated field paths."},
        "attrs": {"type": "object", "additionalProperties": True},
        "ttl": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
        "maybe": {"type": ["integer", "null"]},
        "child": {"$ref": "#/components/schemas/crm.oastest.v1.Thing"},
    }
    # No schema for well-known types or map entries: they are inlined.
    names = set(doc["components"]["schemas"])
    assert not [n for n in names if n.startswith("google.") or n.endswith("Entry")]
    assert timestamp_pb2.Timestamp.DESCRIPTOR.full_name not in names


def test_without_comments(table: RouteTable, tmp_path: Path) -> None:
    doc = build_openapi(table, title="T", version="1", descriptor_set=tmp_path / "missing.binpb")
    validate(doc)
    assert doc["servers"] == [{"url": "/", "description": "This gateway"}]  # where it is served
    op = doc["paths"]["/v1/contacts"]["post"]
    assert "summary" not in op
    assert op["description"] == "Requires the `contacts:write` scope."
    assert "description" not in _schema(doc, "crm.contacts.v1.Contact")
    assert "description" not in _schema(doc, "crm.contacts.v1.Contact")["properties"]["id"]


def test_load_comments() -> None:
    assert DEFAULT_DESCRIPTOR_SET.is_file()  # written by `make proto`
    comments = load_comments(str(DEFAULT_DESCRIPTOR_SET))
    assert comments["crm.contacts.v1.Contact.first_name"] == "Given name."
    assert comments["crm.contacts.v1.ContactsService.GetContact"] == "Returns one contact."
    assert comments["crm.contacts.v1.FieldType.FIELD_TYPE_BOOL"] == "true or false."
    assert comments["crm.common.v1.Problem"].startswith("An RFC 9457 problem document, as")
    assert "crm.contacts.v1.LifecycleStage.LIFECYCLE_STAGE_LEAD" not in comments  # uncommented


def test_a_create_links_to_what_it_made(doc: dict[str, Any]) -> None:
    links = doc["paths"]["/v1/contacts"]["post"]["responses"]["201"]["links"]
    assert links["GetContact"] == {
        "operationId": "GetContact",
        "parameters": {"id": "$response.body#/id"},
    }
    assert links["UpdateContact"]["parameters"] == {
        "id": "$response.body#/id",
        "header.If-Match": "$response.header.ETag",
    }
    assert set(links) == {"GetContact", "UpdateContact", "DeleteContact"}
    listed = doc["paths"]["/v1/contacts"]["get"]["responses"]["200"]
    assert "links" not in listed
