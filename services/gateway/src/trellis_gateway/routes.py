"""The REST routing table, derived from the `google.api.http` annotations of the RPCs.

Pure and descriptor-driven: adding an annotated RPC to a proto is all it takes to publish an
endpoint. JSON <-> protobuf uses the proto3 JSON mapping (google.protobuf.json_format), so the
REST API accepts exactly what the protos define: unknown fields and ill-typed values are
client errors (RequestError, a 400 with the offending field), never a 500.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import unquote

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message

from crm.common.v1 import options_pb2
from crmkit.limits import is_map_field

# googleapis-common-protos ships no type stubs, so its module is imported dynamically: importing
# registers the google.api.http extension, which MethodOptions then parse (see _http_rule).
importlib.import_module("google.api.annotations_pb2")


# One entity tag (quoted or not, weak or not) or `*`: what If-Match may hold; the gateway
# enforces it and the OpenAPI document publishes it.
IF_MATCH = re.compile(r'\s*(\*|(W/)?"?[^",\s]+"?)\s*')


class RequestError(Exception):
    """A client error in the request, naming the field path as the client sent it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Route:
    http_method: str  # upper case: GET, POST, PATCH, PUT, DELETE
    path_template: str  # as annotated, e.g. "/v1/contacts/{id}" or "/v1/leads/{id}:convert"
    regex: re.Pattern[str]  # matches a raw (still percent-encoded) path; one group per param
    path_params: tuple[str, ...]  # request field paths bound by the path, e.g. ("id",)
    body: str  # "" (no body), "*" (the whole request) or a top-level request field name
    method: MethodDescriptor
    full_method: str  # the gRPC path, "/crm.contacts.v1.ContactsService/GetContact"
    required_scope: str  # crm.common.v1.required_scope, "" if none
    request_class: type[Message]
    response_class: type[Message]

    @property
    def service_name(self) -> str:
        return str(self.method.containing_service.name)


_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")


def _variable_regex(pattern: str, last_segment: bool) -> str:
    if pattern in ("", "*"):
        # One segment. In the last segment a ':' starts a custom verb, so it can't be part of the
        # value: GET /v1/contacts/x:merge then finds the POST-only :merge route (405), not id
        # "x:merge". A literal ':' in an id still works percent-encoded (%3A).
        return "([^/:]+)" if last_segment else "([^/]+)"
    parts = []  # a multi-segment pattern such as "contacts/*" or "**"
    segs = pattern.split("/")
    for i, seg in enumerate(segs):
        one = "[^/:]+" if last_segment and i == len(segs) - 1 else "[^/]+"
        parts.append(".+" if seg == "**" else one if seg == "*" else re.escape(seg))
    return "(" + "/".join(parts) + ")"


def _compile_template(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    regex, params, pos = "", [], 0
    for m in _VARIABLE.finditer(template):
        regex += re.escape(template[pos : m.start()])
        rest = template[m.end() :]
        last = "/" not in rest  # nothing but an optional ":verb" follows
        regex += _variable_regex(m.group(2) or "", last)
        params.append(m.group(1).strip())
        pos = m.end()
    regex += re.escape(template[pos:])
    return re.compile(f"^{regex}$"), tuple(params)


def _bindings(rule: Any) -> Iterator[tuple[str, str, str]]:
    """(HTTP method, template, body) of a rule and of its additional_bindings."""
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        yield rule.custom.kind.upper(), rule.custom.path, rule.body
    elif kind is not None:
        yield kind.upper(), str(getattr(rule, kind)), rule.body
    for extra in rule.additional_bindings:
        yield from _bindings(extra)


class RouteTable:
    """All routes; `match` finds the route for a request, `allowed_methods` tells 405 from 404."""

    def __init__(self, routes: Iterable[Route]) -> None:
        # Fewest variables first, so a literal segment wins over a variable one
        # ("/v1/contacts/search" before "/v1/contacts/{id}"); otherwise declaration order.
        self.routes: tuple[Route, ...] = tuple(sorted(routes, key=lambda r: len(r.path_params)))

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, http_method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route and its URL-decoded path parameters, or None (see allowed_methods).

        `path` must be the raw, still percent-encoded path (ASGI `raw_path`, without the query),
        so that an encoded '/' or ':' inside a value does not split segments.
        """
        method = http_method.upper()
        for route in self.routes:
            if route.http_method != method:
                continue
            m = route.regex.match(path)
            if m:
                return route, {
                    name: unquote(value)
                    for name, value in zip(route.path_params, m.groups(), strict=True)
                }
        return None

    def allowed_methods(self, path: str) -> list[str]:
        """Methods with a route for this path: empty means 404, otherwise 405 with Allow."""
        return sorted({r.http_method for r in self.routes if r.regex.match(path)})


def _http_rule(opts: Message) -> Any | None:
    """The google.api.HttpRule of a method's options, if annotated."""
    for field, value in opts.ListFields():  # set extensions are listed too
        if field.full_name == "google.api.http":
            return value
    return None


def build_routes(service_descriptors: Iterable[ServiceDescriptor]) -> RouteTable:
    """A route per `google.api.http` binding of every RPC of the given services."""
    routes = []
    for service in service_descriptors:
        for method in service.methods:
            opts = method.GetOptions()
            rule = _http_rule(opts)
            if rule is None:
                continue  # gRPC-only RPC
            for http_method, template, body in _bindings(rule):
                regex, params = _compile_template(template)
                routes.append(
                    Route(
                        http_method=http_method,
                        path_template=template,
                        regex=regex,
                        path_params=params,
                        body=body,
                        method=method,
                        full_method=f"/{service.full_name}/{method.name}",
                        required_scope=str(opts.Extensions[options_pb2.required_scope]),
                        request_class=message_factory.GetMessageClass(method.input_type),
                        response_class=message_factory.GetMessageClass(method.output_type),
                    )
                )
    return RouteTable(routes)


# --- JSON -> request message ---------------------------------------------------------------

_FAILED_PREFIX = re.compile(r"Failed to parse (\S+) field: ")
# Errors that name the field apart from the path of its parent message.
_NAMED_ERRORS = [
    (re.compile(r'has no field named "(?P<name>[^"]*)" at "(?P<at>[^"]*)"'), "unknown field"),
    (
        re.compile(r'should not have multiple "(?P<name>[^"]*)" oneof fields at "(?P<at>[^"]*)"'),
        "only one field of the oneof may be set",
    ),
]
_MAP_KEY = re.compile(r"\[([^\]]*[^\]\d][^\]]*)\]")  # a bracket holding more than digits


_JSON_TYPES = {
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "str": "a string",
    "list": "an array",
    "dict": "an object",
    "NoneType": "null",
}
# Python's own wording, leaking through json_format, restated in JSON terms for API clients.
_REWORDINGS = [
    (re.compile(r"invalid literal for int\(\) with base 10: (.*)"), r"not an integer: \1"),
    (re.compile(r"could not convert string to float: (.*)"), r"not a number: \1"),
    (re.compile(r"repeated field \S+ must be in \[\].*", re.S), "expected an array"),
    (re.compile(r"Map field \S+ must be in a dict.*", re.S), "expected an object"),
    (
        re.compile(r"(Failed to parse timestamp|time data ).*", re.S),
        "expected an RFC 3339 timestamp such as 2024-05-01T12:00:00Z",
    ),
]
_GOT_TYPE = re.compile(r"expected string or bytes-like object, got '(\w+)'")


def _reword(reason: str) -> str:
    m = _GOT_TYPE.search(reason)
    if m:
        return f"expected a string, got {_JSON_TYPES.get(m[1], m[1])}"
    for pattern, replacement in _REWORDINGS:
        if pattern.match(reason):
            return pattern.sub(replacement, reason)
    return reason


def _segments(path: str) -> int:
    return path.count(".") + path.count("[") + (1 if path else 0)


def parse_error_field(error: Exception, root: str) -> tuple[str, str]:
    """(field path, reason) out of a json_format.ParseError raised parsing a `root` message.

    json_format reports the failing field in two ways, neither complete: each level wraps the
    error as "Failed to parse <key> field: ..." (skipped for oneof members; no list indices), and
    the innermost error often ends with " at <Root>.<path>" (with indices and map keys, but for
    some errors only the parent's path). The longer of the two is the more precise; an unknown
    field is named separately. Keys are as the client sent them (snake_case or lowerCamelCase).
    """
    text = str(error)
    chain = ".".join(_FAILED_PREFIX.findall(text))
    reason = _FAILED_PREFIX.sub("", text).split("\n", 1)[0]
    at_root = re.compile(rf' at "?{re.escape(root)}((?:\.[^\s.\[\]"]+|\[[^\]]*\])*)')
    for pattern, named_reason in _NAMED_ERRORS:
        named = pattern.search(text)
        if named:
            at = named["at"].partition(".")[2]  # drop the root message's name
            path = f"{at}.{named['name']}" if at else named["name"]
            reason = named_reason
            break
    else:
        path = chain
        ats = list(at_root.finditer(reason))
        if ats:
            # The last " at <Root>..." is json_format's; an earlier one could be the client's value.
            reason = reason[: ats[-1].start()]
            at = ats[-1][1].lstrip(".")
            if _segments(at) >= _segments(chain):
                path = at
    # Map keys as ".key", as crmkit.limits names them; list indices stay "[i]".
    path = _MAP_KEY.sub(r".\1", path)
    return path, _reword(reason.rstrip(". ")) or "invalid value"


def _field_by_key(desc: Descriptor, key: str) -> FieldDescriptor | None:
    """The field a JSON key names: json_format accepts both the proto and the JSON name."""
    for f in desc.fields:
        if key in (f.name, f.json_name):
            return f
    return None


# Well-known types whose JSON form is a string or number, so they can come from a query value.
_SCALAR_WKT = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    *(
        f"google.protobuf.{n}Value"
        for n in (
            "Double",
            "Float",
            "Int64",
            "UInt64",
            "Int32",
            "UInt32",
            "Bool",
            "String",
            "Bytes",
        )
    ),
}
_NOT_OBJECT_WKT = {*_SCALAR_WKT, "google.protobuf.Value", "google.protobuf.ListValue"}


def _check_objects(js: Any, desc: Descriptor, path: str) -> None:
    """Rejects a non-object where a message is expected.

    json_format would iterate a string or list as if it were an object and report a
    nonsensical "unknown field"; here the client is told which field should be an object.
    """
    if not isinstance(js, dict):
        raise RequestError(path or "body", "must be a JSON object")
    for key, value in js.items():
        field = _field_by_key(desc, key)
        sub_type = field.message_type if field is not None else None
        sub = f"{path}.{key}" if path else key
        if field is not None and field.enum_type is not None:
            _check_enum_names(value, field, sub)
        if field is None or sub_type is None or value is None:
            continue  # unknown keys and scalars: json_format reports them well
        if is_map_field(field):
            value_type = sub_type.fields_by_name["value"].message_type
            if isinstance(value, dict) and value_type is not None:
                for k, v in value.items():
                    _check_message(v, value_type, f"{sub}.{k}")
        elif field.is_repeated:
            if isinstance(value, list):
                for i, item in enumerate(value):
                    _check_message(item, sub_type, f"{sub}[{i}]")
        else:
            _check_message(value, sub_type, sub)


def _check_enum_names(value: Any, field: FieldDescriptor, path: str) -> None:
    """An enum by name, as the API publishes it: json_format would also take a number."""
    enum = field.enum_type
    assert enum is not None
    values = value if field.is_repeated and isinstance(value, list) else [value]
    for i, item in enumerate(values):
        if item is not None and not isinstance(item, str):
            where = f"{path}[{i}]" if field.is_repeated else path
            raise RequestError(where, f"expected one of: {', '.join(enum.values_by_name)}")


def _check_message(js: Any, desc: Descriptor, path: str) -> None:
    if desc.full_name in _NOT_OBJECT_WKT or js is None:
        return
    if desc.full_name.startswith("google.protobuf."):
        if not isinstance(js, dict):  # Struct, Any, Empty
            raise RequestError(path, "must be a JSON object")
        return
    _check_objects(js, desc, path)


def _parse(js: dict[str, Any], msg: Message) -> None:
    try:
        json_format.ParseDict(js, msg, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        path, reason = parse_error_field(exc, msg.DESCRIPTOR.name)
        raise RequestError(path or "body", reason) from None


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    """ "a.b" -> {"a": {"b": value}}."""
    out: dict[str, Any] = {}
    node = out
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return out


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _query_value(name: str, field: FieldDescriptor, values: list[str]) -> Any:
    def one(raw: str) -> Any:
        if field.type == FieldDescriptor.TYPE_BOOL:
            # json_format wants a JSON boolean; a query string only has the words.
            if raw not in ("true", "false"):
                raise RequestError(name, 'expected "true" or "false"')
            return raw == "true"
        if field.enum_type is not None and raw not in field.enum_type.values_by_name:
            # json_format would also take a number ("0"); the API publishes enums by name only.
            names = ", ".join(field.enum_type.values_by_name)
            raise RequestError(name, f"expected one of {names}")
        return raw  # json_format converts numbers, Timestamps... from strings

    if field.is_repeated:
        return [one(v) for v in values]
    if len(values) > 1:
        raise RequestError(name, "expected a single value")
    return one(values[0])


def _query_settable(field: FieldDescriptor) -> bool:
    """Whether a query value can set the field: scalars, enums, Timestamp and the like."""
    return field.message_type is None or field.message_type.full_name in _SCALAR_WKT


def query_fields(route: Route) -> list[FieldDescriptor]:
    """The top-level request fields a query parameter may set (what OpenAPI publishes)."""
    if route.body == "*":
        return []
    bound = {route.body, *(p.split(".")[0] for p in route.path_params)}
    return [f for f in route.method.input_type.fields if f.name not in bound and _query_settable(f)]


def _query_dict(route: Route, query: Mapping[str, list[str]]) -> dict[str, Any]:
    """The query parameters as a proto3-JSON object, each checked against the request fields."""
    desc = route.method.input_type
    bound = {route.body, *route.path_params} - {""}
    out: dict[str, Any] = {}
    for name, values in query.items():
        if not values:
            continue
        field = None
        d: Descriptor | None = desc
        proto_path = []
        for key in name.split("."):
            field = _field_by_key(d, key) if d is not None else None
            if field is None:
                raise RequestError(name, "unknown query parameter")
            proto_path.append(field.name)
            d = field.message_type
        assert field is not None  # name.split(".") is never empty
        dotted = ".".join(proto_path)
        if route.body == "*" or any(
            dotted == b or dotted.startswith(f"{b}.") or b.startswith(f"{dotted}.") for b in bound
        ):
            raise RequestError(name, "set by the path or the body, not the query")
        if not _query_settable(field):  # a message or a map
            raise RequestError(name, "cannot be set from a query parameter")
        _merge(out, _nest(name, _query_value(name, field, values)))
    return out


def build_request(
    route: Route,
    path_params: Mapping[str, str],
    query: Mapping[str, list[str]],
    body_json: Any | None,
) -> tuple[Message, list[str]]:
    """The request message for a matched route, and the field mask implied by the body.

    body_json is the decoded JSON body, None when there is none. The mask is the body object's
    top-level keys as proto field names (a PATCH changes exactly the keys sent); if the request
    has an `update_mask` field (repeated string or FieldMask) that the caller left empty, it is
    filled with them here. Raises RequestError naming the field on any invalid input.
    """
    request = route.request_class()
    desc = route.method.input_type
    mask: list[str] = []

    if route.body and body_json is not None:
        if route.body == "*":
            _check_objects(body_json, desc, "")
            _parse(body_json, request)
            target: Descriptor | None = desc
        else:
            field = desc.fields_by_name[route.body]
            target = field.message_type
            if target is not None and not target.full_name.startswith("google.protobuf."):
                if not isinstance(body_json, dict):
                    raise RequestError("body", "must be a JSON object")
                _check_objects(body_json, target, route.body)
            _parse({route.body: body_json}, request)
        if target is not None and isinstance(body_json, dict):
            for key in body_json:
                f = _field_by_key(target, key)
                if f is not None and f.name not in mask:
                    mask.append(f.name)
    elif body_json not in (None, {}):
        raise RequestError("body", "this endpoint takes no request body")

    _parse(_query_dict(route, query), request)

    # Path parameters last: they win over the same field in a "*" body.
    path_js: dict[str, Any] = {}
    for name in route.path_params:
        _merge(path_js, _nest(name, path_params[name]))
    _parse(path_js, request)

    update_mask = desc.fields_by_name.get("update_mask")
    if mask and update_mask is not None:
        if update_mask.is_repeated and update_mask.type == FieldDescriptor.TYPE_STRING:
            if not request.update_mask:  # type: ignore[attr-defined]
                request.update_mask.extend(mask)  # type: ignore[attr-defined]
        elif (
            update_mask.message_type is not None
            and update_mask.message_type.full_name == "google.protobuf.FieldMask"
            and not request.update_mask.paths  # type: ignore[attr-defined]
        ):
            request.update_mask.paths.extend(mask)  # type: ignore[attr-defined]
    return request, mask


def message_to_json(msg: Message) -> dict[str, Any]:
    """The API's JSON for a message: snake_case names, every field present, enums by name."""
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _is_standard_create(route: Route) -> bool:
    """AIP-133's Create, by its shape rather than its name: a POST to a collection (no custom
    verb) whose body is the resource and whose response is that resource."""
    if route.http_method != "POST" or route.body in ("", "*"):
        return False
    if ":" in route.path_template.rsplit("/", 1)[-1]:
        return False
    body = route.method.input_type.fields_by_name.get(route.body)
    output = route.method.output_type.full_name
    return (
        body is not None and body.message_type is not None and body.message_type.full_name == output
    )


@cache  # asked on every request; the answer is the route's
def success_status(route: Route) -> int:
    """The status of a successful call: 204 without content, 201 for a Create, else 200."""
    if route.method.output_type.full_name == "google.protobuf.Empty":
        return 204
    return 201 if _is_standard_create(route) else 200
