"""The REST routing table and JSON -> request transcoding, from the real descriptors.

The contacts and gateway protos have no custom verbs, nested path variables or oneofs yet, so a
small test-only proto (built as a FileDescriptorProto) covers those.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, field_mask_pb2, json_format
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from crm.contacts.v1 import contacts_pb2
from crm.gateway.v1 import gateway_pb2
from trellis_gateway.routes import (
    IF_MATCH,
    RequestError,
    Route,
    RouteTable,
    build_request,
    build_routes,
    message_to_json,
    parse_error_field,
    query_fields,
)

_F = descriptor_pb2.FieldDescriptorProto
# googleapis-common-protos has no type stubs; its google.api.http extension is all we need.
_HTTP = importlib.import_module("google.api.annotations_pb2").http


def _leads_service() -> ServiceDescriptor:
    """crm.routetest.v1.LeadsService: custom verbs, a nested path variable, a oneof, a FieldMask."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="crm/routetest/v1/leads.proto",
        package="crm.routetest.v1",
        syntax="proto3",
        dependency=["google/api/annotations.proto", "google/protobuf/field_mask.proto"],
    )

    def message(name: str, *fields: tuple[str, int, int, str]) -> descriptor_pb2.DescriptorProto:
        msg = fdp.message_type.add(name=name)
        for fname, ftype, label, type_name in fields:
            field = msg.field.add(
                name=fname,
                number=len(msg.field) + 1,
                type=ftype,
                label=label,
            )
            if type_name:  # setting it, even to "", declares a message or enum type
                field.type_name = type_name
        return msg

    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    message("Lead", ("id", _F.TYPE_STRING, opt, ""), ("note", _F.TYPE_STRING, opt, ""))
    convert = message(
        "ConvertLeadRequest",
        ("id", _F.TYPE_STRING, opt, ""),
        ("note", _F.TYPE_STRING, opt, ""),
        ("dry_run", _F.TYPE_BOOL, opt, ""),
        ("tags", _F.TYPE_STRING, rep, ""),
        ("email", _F.TYPE_STRING, opt, ""),
        ("score", _F.TYPE_INT32, opt, ""),
    )
    convert.oneof_decl.add(name="target")
    convert.field[4].oneof_index = 0
    convert.field[5].oneof_index = 0
    message("GetLeadRequest", ("id", _F.TYPE_STRING, opt, ""), ("dry_run", _F.TYPE_BOOL, opt, ""))
    message("GetLeadByNumberRequest", ("number", _F.TYPE_INT64, opt, ""))
    message("ListHotLeadsRequest")
    message("GetNoteRequest", ("name", _F.TYPE_STRING, opt, ""))
    message(
        "UpdateLeadRequest",
        ("lead", _F.TYPE_MESSAGE, opt, ".crm.routetest.v1.Lead"),
        ("update_mask", _F.TYPE_MESSAGE, opt, ".google.protobuf.FieldMask"),
    )

    service = fdp.service.add(name="LeadsService")

    def rpc(name: str, request: str, verb: str, path: str, body: str = "") -> None:
        method = service.method.add(
            name=name,
            input_type=f".crm.routetest.v1.{request}",
            output_type=".crm.routetest.v1.Lead",
        )
        rule = method.options.Extensions[_HTTP]
        setattr(rule, verb, path)
        rule.body = body
        if name == "GetLead":
            rule.additional_bindings.add(get="/v2/leads/{id}")

    rpc("ConvertLead", "ConvertLeadRequest", "post", "/v1/leads/{id}:convert", "*")
    rpc("SearchLeads", "ConvertLeadRequest", "post", "/v1/leads:search", "*")
    rpc("GetLead", "GetLeadRequest", "get", "/v1/leads/{id}")
    rpc("ListHotLeads", "ListHotLeadsRequest", "get", "/v1/leads/hot")
    rpc("GetLeadByNumber", "GetLeadByNumberRequest", "get", "/v1/lead-numbers/{number}")
    rpc("UpdateLead", "UpdateLeadRequest", "patch", "/v1/leads/{lead.id}", "lead")
    rpc("GetNote", "GetNoteRequest", "get", "/v1/{name=leads/*/notes/*}")
    service.method.add(  # gRPC only: no route
        name="Internal",
        input_type=".crm.routetest.v1.Lead",
        output_type=".crm.routetest.v1.Lead",
    )

    assert field_mask_pb2.FieldMask.DESCRIPTOR  # its file must be in the pool before ours
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName(fdp.name)
    except KeyError:
        file = pool.AddSerializedFile(fdp.SerializeToString())
    return file.services_by_name["LeadsService"]


CONTACTS = contacts_pb2.DESCRIPTOR.services_by_name["ContactsService"]
LEADS = _leads_service()


@pytest.fixture(scope="module")
def table() -> RouteTable:
    services = [CONTACTS, LEADS, *gateway_pb2.DESCRIPTOR.services_by_name.values()]
    return build_routes(services)


def _match(table: RouteTable, method: str, path: str) -> tuple[Route, dict[str, str]]:
    found = table.match(method, path)
    assert found is not None, (method, path)
    return found


def _error(fn: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(RequestError) as info:
        fn(*args)
    return info.value.field, info.value.message


# --- the table ---------------------------------------------------------------------------


def test_routes_come_from_the_annotations(table: RouteTable) -> None:
    route, params = _match(table, "GET", "/v1/contacts/c1")
    assert params == {"id": "c1"}
    assert route.http_method == "GET"
    assert route.path_template == "/v1/contacts/{id}"
    assert route.path_params == ("id",)
    assert route.body == ""
    assert route.method.name == "GetContact"
    assert route.service_name == "ContactsService"
    assert route.full_method == "/crm.contacts.v1.ContactsService/GetContact"
    assert route.required_scope == "contacts:read"
    assert route.request_class is contacts_pb2.GetContactRequest
    assert route.response_class is contacts_pb2.Contact

    create, _ = _match(table, "post", "/v1/contacts")  # the method's case does not matter
    assert (create.method.name, create.body, create.required_scope) == (
        "CreateContact",
        "contact",
        "contacts:write",
    )
    keys, _ = _match(table, "DELETE", "/v1/api-keys/k1")
    assert keys.full_method == "/crm.gateway.v1.ApiKeysService/DeleteApiKey"


def test_every_annotated_rpc_has_a_route_and_unannotated_ones_none(table: RouteTable) -> None:
    names = {r.method.full_name for r in table}
    assert {m.full_name for m in CONTACTS.methods} <= names
    assert "crm.routetest.v1.LeadsService.Internal" not in names
    # GetLead has an additional binding: two routes.
    assert [r.path_template for r in table if r.method.name == "GetLead"] == [
        "/v1/leads/{id}",
        "/v2/leads/{id}",
    ]


def test_path_values_are_url_decoded(table: RouteTable) -> None:
    assert _match(table, "GET", "/v1/contacts/a%20b%2Fc")[1] == {"id": "a b/c"}
    assert _match(table, "GET", "/v1/contacts/%C3%A9")[1] == {"id": "é"}


def test_404_versus_405(table: RouteTable) -> None:
    assert table.match("DELETE", "/v1/contacts") is None
    assert table.allowed_methods("/v1/contacts") == ["GET", "POST"]  # 405, Allow: GET, POST
    assert table.allowed_methods("/v1/contacts/c1") == ["DELETE", "GET", "PATCH"]
    for path in ("/v1/nothing", "/v1/contacts/", "/v1/contacts/a/b", "/v1/contactsx", "/"):
        assert table.match("GET", path) is None
        assert table.allowed_methods(path) == [], path


def test_custom_verbs(table: RouteTable) -> None:
    route, params = _match(table, "POST", "/v1/leads/L1:convert")
    assert (route.method.name, params) == ("ConvertLead", {"id": "L1"})
    assert route.full_method == "/crm.routetest.v1.LeadsService/ConvertLead"
    # An encoded ':' belongs to the value, the literal one starts the verb.
    assert _match(table, "POST", "/v1/leads/a%3Ab:convert")[1] == {"id": "a:b"}
    assert _match(table, "POST", "/v1/leads:search")[0].method.name == "SearchLeads"
    # The verb is not an id: GET on a POST-only custom method is a 405, not GetLead("L1:convert").
    assert table.match("GET", "/v1/leads/L1:convert") is None
    assert table.allowed_methods("/v1/leads/L1:convert") == ["POST"]
    assert table.allowed_methods("/v1/leads/L1:unknown") == []
    assert table.allowed_methods("/v1/leads:search") == ["POST"]


def test_literal_segment_wins_over_variable(table: RouteTable) -> None:
    assert _match(table, "GET", "/v1/leads/hot")[0].method.name == "ListHotLeads"
    assert _match(table, "GET", "/v1/leads/warm")[0].method.name == "GetLead"


def test_nested_path_variable(table: RouteTable) -> None:
    route, params = _match(table, "PATCH", "/v1/leads/L7")
    assert (route.path_params, params) == (("lead.id",), {"lead.id": "L7"})


def test_multi_segment_variable(table: RouteTable) -> None:
    route, params = _match(table, "GET", "/v1/leads/L1/notes/n%2F2")
    assert (route.method.name, params) == ("GetNote", {"name": "leads/L1/notes/n/2"})
    assert table.match("GET", "/v1/leads/L1/notes") is None
    req, _ = build_request(route, params, {}, None)
    assert req.name == "leads/L1/notes/n/2"  # type: ignore[attr-defined]


# --- build_request -------------------------------------------------------------------------


def test_body_field_path_and_mask(table: RouteTable) -> None:
    route, params = _match(table, "PATCH", "/v1/contacts/c1")
    body = {"firstName": "Ada", "emails": ["ada@example.com"], "custom_fields": {"tier": "gold"}}
    req, mask = build_request(route, params, {}, body)
    assert isinstance(req, contacts_pb2.UpdateContactRequest)
    assert req.id == "c1"
    assert req.contact.first_name == "Ada"
    assert list(req.contact.emails) == ["ada@example.com"]
    assert req.contact.custom_fields["tier"].string_value == "gold"
    # A PATCH changes exactly the keys sent, named as in the proto.
    assert mask == ["first_name", "emails", "custom_fields"]
    assert list(req.update_mask) == mask


def test_explicit_update_mask_is_kept(table: RouteTable) -> None:
    route, params = _match(table, "PATCH", "/v1/contacts/c1")
    req, mask = build_request(route, params, {"update_mask": ["last_name"]}, {"first_name": "A"})
    assert mask == ["first_name"]
    assert list(req.update_mask) == ["last_name"]  # type: ignore[attr-defined]


def test_field_mask_typed_update_mask_and_nested_path_param(table: RouteTable) -> None:
    route, params = _match(table, "PATCH", "/v1/leads/L7")
    req, mask = build_request(route, params, {}, {"note": "hi", "id": "ignored"})
    assert mask == ["note", "id"]
    lead = req.lead  # type: ignore[attr-defined]
    assert (lead.id, lead.note) == ("L7", "hi")  # the path wins over the body
    assert list(req.update_mask.paths) == ["note", "id"]  # type: ignore[attr-defined]


def test_star_body_with_path_param(table: RouteTable) -> None:
    route, params = _match(table, "POST", "/v1/leads/L1:convert")
    req, _ = build_request(route, params, {}, {"id": "other", "dryRun": True, "tags": ["a"]})
    assert json_format.MessageToDict(req) == {"id": "L1", "dryRun": True, "tags": ["a"]}


def test_empty_body(table: RouteTable) -> None:
    route, params = _match(table, "POST", "/v1/contacts")
    req, mask = build_request(route, params, {}, None)
    assert (req, mask) == (contacts_pb2.CreateContactRequest(), [])
    req, mask = build_request(route, params, {}, {})
    assert mask == []
    assert req.HasField("contact")


def test_query_values_convert_by_field_type(table: RouteTable) -> None:
    route, params = _match(table, "GET", "/v1/contacts")
    query = {
        "page_size": ["20"],
        "pageToken": ["t1"],  # lowerCamelCase too, as json_format accepts
        "updated_after": ["2024-05-01T12:00:00Z"],
        "lifecycle_stage": ["LIFECYCLE_STAGE_LEAD"],
        "tag": [],  # a key without values is ignored
    }
    req, mask = build_request(route, params, query, None)
    assert mask == []
    assert message_to_json(req) == {
        "page_size": 20,
        "page_token": "t1",
        "tag": "",
        "company_id": "",
        "updated_after": "2024-05-01T12:00:00Z",
        "lifecycle_stage": "LIFECYCLE_STAGE_LEAD",
        "email": "",
    }


def test_query_bools_and_repeated(table: RouteTable) -> None:
    route, params = _match(table, "GET", "/v1/leads/L1")
    req, _ = build_request(route, params, {"dry_run": ["true"]}, None)
    assert req.dry_run is True  # type: ignore[attr-defined]
    assert _error(build_request, route, params, {"dry_run": ["yes"]}, None) == (
        "dry_run",
        'expected "true" or "false"',
    )
    upd, upd_params = _match(table, "PATCH", "/v1/contacts/c1")
    req, _ = build_request(upd, upd_params, {"update_mask": ["a", "b"]}, None)
    assert list(req.update_mask) == ["a", "b"]  # type: ignore[attr-defined]


_STAGES = "expected one of " + ", ".join(contacts_pb2.LifecycleStage.keys())


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"page_size": ["abc"]}, "page_size", "not an integer: 'abc'"),
        ({"page_size": ["1.5"]}, "page_size", 'Couldn\'t parse non-integer string: "1.5"'),
        ({"pageSize": ["99999999999"]}, "pageSize", "Value out of range: 99999999999"),
        ({"page_size": ["1", "2"]}, "page_size", "expected a single value"),
        ({"bogus": ["1"]}, "bogus", "unknown query parameter"),
        ({"page_size.x": ["1"]}, "page_size.x", "unknown query parameter"),
        ({"lifecycle_stage": ["LEAD"]}, "lifecycle_stage", _STAGES),
        ({"lifecycle_stage": ["2"]}, "lifecycle_stage", _STAGES),  # numbers are not names
        (
            {"updated_after": ["2024-05-01"]},
            "updated_after",
            "expected an RFC 3339 timestamp such as 2024-05-01T12:00:00Z",
        ),
    ],
)
def test_bad_query_values(
    table: RouteTable, query: dict[str, list[str]], field: str, message: str
) -> None:
    route, params = _match(table, "GET", "/v1/contacts")
    assert _error(build_request, route, params, query, None) == (field, message)


def test_query_cannot_set_path_body_or_message_fields(table: RouteTable) -> None:
    upd, params = _match(table, "PATCH", "/v1/contacts/c1")
    for name in ("id", "contact", "contact.first_name"):
        assert _error(build_request, upd, params, {name: ["x"]}, None) == (
            name,
            "set by the path or the body, not the query",
        )
    conv, params = _match(table, "POST", "/v1/leads/L1:convert")  # body "*": no query at all
    assert _error(build_request, conv, params, {"note": ["x"]}, None)[0] == "note"
    create, params = _match(table, "POST", "/v1/contacts")
    assert _error(build_request, create, params, {"contact": ["x"]}, None)[0] == "contact"


def test_query_fields(table: RouteTable) -> None:
    names = [f.name for f in query_fields(_match(table, "GET", "/v1/contacts")[0])]
    assert names == [
        "page_size",
        "page_token",
        "tag",
        "company_id",
        "updated_after",
        "lifecycle_stage",
        "email",
    ]
    patch = _match(table, "PATCH", "/v1/contacts/c1")[0]
    assert [f.name for f in query_fields(patch)] == ["update_mask", "etag"]
    assert query_fields(_match(table, "POST", "/v1/leads:search")[0]) == []


def test_bad_path_value(table: RouteTable) -> None:
    route, params = _match(table, "GET", "/v1/lead-numbers/abc")
    assert _error(build_request, route, params, {}, None) == ("number", "not an integer: 'abc'")
    req, _ = build_request(*_match(table, "GET", "/v1/lead-numbers/42"), {}, None)
    assert req.number == 42  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("x", "body", "must be a JSON object"),
        ([{"first_name": "a"}], "body", "must be a JSON object"),
        (3, "body", "must be a JSON object"),
        ({"bogus": 1}, "contact.bogus", "unknown field"),
        ({"first_name": 5}, "contact.first_name", "expected a string, got a number"),
        ({"firstName": True}, "contact.firstName", "expected a string, got a boolean"),
        ({"emails": "a@example.com"}, "contact.emails", "expected an array"),
        ({"emails": ["a@example.com", 7]}, "contact.emails", "expected a string, got a number"),
        (
            {"lifecycle_stage": "VIP"},
            "contact.lifecycle_stage",
            "Invalid enum value VIP for enum type crm.contacts.v1.LifecycleStage",
        ),
        (
            {"create_time": "2024-13-01T00:00:00Z"},
            "contact.create_time",
            "expected an RFC 3339 timestamp such as 2024-05-01T12:00:00Z",
        ),
        ({"custom_fields": ["a"]}, "contact.custom_fields", "expected an object"),
        ({"version": "v1"}, "contact.version", "not an integer: 'v1'"),
    ],
)
def test_bad_bodies(table: RouteTable, body: Any, field: str, message: str) -> None:
    route, params = _match(table, "POST", "/v1/contacts")
    assert _error(build_request, route, params, {}, body) == (field, message)


def test_nested_non_object_is_named(table: RouteTable) -> None:
    route, params = _match(table, "POST", "/v1/leads/L1:convert")
    assert _error(build_request, route, params, {}, ["x"]) == ("body", "must be a JSON object")
    upd, upd_params = _match(table, "PATCH", "/v1/leads/L1")
    assert _error(build_request, upd, upd_params, {}, "x") == ("body", "must be a JSON object")


def test_body_where_none_is_expected(table: RouteTable) -> None:
    route, params = _match(table, "GET", "/v1/contacts/c1")
    assert _error(build_request, route, params, {}, {"id": "x"}) == (
        "body",
        "this endpoint takes no request body",
    )


def test_oneof_members_are_named(table: RouteTable) -> None:
    route, params = _match(table, "POST", "/v1/leads:search")
    assert _error(build_request, route, params, {}, {"score": "1.5"})[0] == "score"
    assert _error(build_request, route, params, {}, {"score": "x"})[0] == "score"
    assert _error(build_request, route, params, {}, {"email": "a", "score": 1}) == (
        "target",
        "only one field of the oneof may be set",
    )


# --- parse_error_field on real json_format errors ------------------------------------------


def _parse_error(js: dict[str, Any], message: Message) -> json_format.ParseError:
    with pytest.raises(json_format.ParseError) as info:
        json_format.ParseDict(js, message)
    return info.value


@pytest.mark.parametrize(
    ("js", "path"),
    [
        ({"contact": {"bogus": 1}}, "contact.bogus"),  # unknown nested field
        ({"bogus": 1}, "bogus"),  # unknown top-level field
        ({"contact": {"firstName": 5}}, "contact.firstName"),  # wrong type, as sent
        ({"contact": {"lifecycle_stage": "X"}}, "contact.lifecycle_stage"),  # bad enum
        ({"contact": {"update_time": "noon"}}, "contact.update_time"),  # bad timestamp
        ({"contact": {"custom_fields": {"tier": {"a": object()}}}}, "contact.custom_fields.tier.a"),
        ({"contact": {"tags": "t"}}, "contact.tags"),  # not a list
        ({"contact": {"tags": [None]}}, "contact.tags[0]"),  # the index, when json_format has it
        ({"contact": {"version": "1.5"}}, "contact.version"),
    ],
)
def test_parse_error_field(js: dict[str, Any], path: str) -> None:
    error = _parse_error(js, contacts_pb2.CreateContactRequest())
    found, reason = parse_error_field(error, "CreateContactRequest")
    assert found == path
    assert reason
    assert "Failed to parse" not in reason
    assert "\n" not in reason


def test_parse_error_field_ignores_spoofed_paths_in_values() -> None:
    # A value that itself reads " at CreateContactRequest.x" must not redirect the path.
    error = _parse_error(
        {"contact": {"tags": "v at CreateContactRequest.contact.emails.zzz"}},
        contacts_pb2.CreateContactRequest(),
    )
    assert parse_error_field(error, "CreateContactRequest")[0] == "contact.tags"


# --- responses -----------------------------------------------------------------------------


def test_message_to_json_is_snake_case_with_defaults_and_enum_names() -> None:
    contact = contacts_pb2.Contact(
        id="c1",
        first_name="Ada",
        lifecycle_stage=contacts_pb2.LIFECYCLE_STAGE_CUSTOMER,
        version=3,
    )
    contact.create_time.FromSeconds(0)
    js = message_to_json(contact)
    assert js["first_name"] == "Ada"
    assert js["last_name"] == ""  # present though empty
    assert js["emails"] == []
    assert js["custom_fields"] == {}
    assert js["lifecycle_stage"] == "LIFECYCLE_STAGE_CUSTOMER"
    assert js["version"] == "3"  # int64 is a string in proto3 JSON
    assert js["create_time"] == "1970-01-01T00:00:00Z"
    assert "update_time" not in js  # unset messages have presence: left out
    assert "firstName" not in js


def test_request_classes_are_concrete(table: RouteTable) -> None:
    for route in table:
        assert route.request_class().DESCRIPTOR is route.method.input_type
        assert route.response_class().DESCRIPTOR is route.method.output_type
        for f in route.request_class.DESCRIPTOR.fields:
            assert isinstance(f, FieldDescriptor)


@pytest.mark.parametrize("stage", [2, False, 2.0])
def test_enums_in_a_body_are_names_only(table: RouteTable, stage: object) -> None:
    route, params = _match(table, "POST", "/v1/contacts")
    with pytest.raises(RequestError) as err:
        build_request(route, params, {}, {"first_name": "Ada", "lifecycle_stage": stage})
    assert err.value.field == "contact.lifecycle_stage"
    assert err.value.message.startswith("expected one of: LIFECYCLE_STAGE_UNSPECIFIED")


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ('"abc"', True),
        ('W/"abc"', True),
        ("abc", True),
        ("*", True),
        ("", False),
        ('"a", "b"', False),
        ('"a b"', False),
    ],
)
def test_if_match_holds_one_entity_tag(header: str, ok: bool) -> None:
    assert bool(IF_MATCH.fullmatch(header)) is ok
