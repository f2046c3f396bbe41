"""The OpenAPI 3.1 document of the REST API, generated from the same descriptors as the routes.

Schemas follow the proto3 JSON mapping as the gateway speaks it (snake_case names, int64 as
strings, enums by name); descriptions are the proto comments, read from the FileDescriptorSet
that `make proto` writes with source info (descriptions are simply left out without it).
"""

from __future__ import annotations

import importlib
import importlib.resources
import os
import re
from collections.abc import Iterator
from enum import Enum
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from crm.common.v1 import common_pb2
from crm.gateway.v1 import gateway_pb2
from crmkit import contract
from crmkit.limits import field_limits, is_map_field, value_range
from trellis_gateway import idempotency
from trellis_gateway.routes import IF_MATCH, Route, RouteTable, query_fields, success_status

DescriptorSetPath = str | os.PathLike[str] | Traversable
SourcePath = tuple[int, ...]
Element = tuple[str, SourcePath]

DEFAULT_DESCRIPTOR_SET: Traversable = importlib.resources.files("crm") / "descriptors.binpb"

_OPENAPI_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


# --- comments ------------------------------------------------------------------------------


def _clean(comment: str) -> str:
    return "\n".join(line.strip() for line in comment.strip().splitlines())


def _element_paths(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, SourcePath]]:
    """(full name, source-info path) of every message, field, enum, value, service and method.

    Paths are field numbers in descriptor.proto: FileDescriptorProto.message_type = 4,
    enum_type = 5, service = 6; DescriptorProto.field = 2, nested_type = 3, enum_type = 4;
    EnumDescriptorProto.value = 2; ServiceDescriptorProto.method = 2.
    """
    pkg = f"{file.package}." if file.package else ""

    def enum(
        e: descriptor_pb2.EnumDescriptorProto, name: str, path: SourcePath
    ) -> Iterator[Element]:
        yield name, path
        for i, v in enumerate(e.value):
            yield f"{name}.{v.name}", (*path, 2, i)

    def message(
        m: descriptor_pb2.DescriptorProto, name: str, path: SourcePath
    ) -> Iterator[Element]:
        yield name, path
        for i, f in enumerate(m.field):
            yield f"{name}.{f.name}", (*path, 2, i)
        for i, n in enumerate(m.nested_type):
            yield from message(n, f"{name}.{n.name}", (*path, 3, i))
        for i, e in enumerate(m.enum_type):
            yield from enum(e, f"{name}.{e.name}", (*path, 4, i))

    for i, m in enumerate(file.message_type):
        yield from message(m, pkg + m.name, (4, i))
    for i, e in enumerate(file.enum_type):
        yield from enum(e, pkg + e.name, (5, i))
    for i, s in enumerate(file.service):
        yield pkg + s.name, (6, i)
        for j, meth in enumerate(s.method):
            yield f"{pkg}{s.name}.{meth.name}", (6, i, 2, j)


def load_comments(descriptor_set: DescriptorSetPath = DEFAULT_DESCRIPTOR_SET) -> dict[str, str]:
    """Comments by full name ("pkg.Msg", "pkg.Msg.field", "pkg.Enum.VALUE", "pkg.Service",
    "pkg.Service.Method"), from a FileDescriptorSet with source info; {} if the file is absent."""
    source = descriptor_set if isinstance(descriptor_set, Traversable) else Path(descriptor_set)
    if not source.is_file():
        return {}
    fds = descriptor_pb2.FileDescriptorSet.FromString(source.read_bytes())
    out: dict[str, str] = {}
    for file in fds.file:
        by_path = {
            tuple(loc.path): _clean(loc.leading_comments or loc.trailing_comments)
            for loc in file.source_code_info.location
            if loc.leading_comments or loc.trailing_comments
        }
        for name, path in _element_paths(file):
            if by_path.get(path):
                out[name] = by_path[path]
    return out


# --- schemas ---------------------------------------------------------------------------------


class Form(Enum):
    """Which JSON a schema describes; the suffix tells its component apart from the others.

    The server writes every field without presence (scalars, enums, lists, maps), so those are
    `required` in what it writes; a client writes only what the protos mark REQUIRED, never the
    OUTPUT_ONLY fields, and in a PATCH body only the keys it changes. Hyphens cannot occur in
    proto names, so a suffixed name never meets a message's own.
    """

    OUTPUT = ""
    INPUT = "-Input"
    PATCH = "-Patch"


def _wkt_schema(full_name: str) -> dict[str, Any] | None:
    """Inline schemas of the well-known types, which have a special proto3 JSON form."""
    wrappers = {
        "Double": "number",
        "Float": "number",
        "Int32": "integer",
        "UInt32": "integer",
        "Bool": "boolean",
        "String": "string",
        "Int64": "string",  # 64-bit integers are strings in proto3 JSON
        "UInt64": "string",
        "Bytes": "string",
    }
    short = full_name.removeprefix("google.protobuf.")
    if short == full_name:
        return None
    if short.endswith("Value") and short[: -len("Value")] in wrappers:
        return {"type": [wrappers[short[: -len("Value")]], "null"]}
    fixed: dict[str, dict[str, Any]] = {
        "Timestamp": {"type": "string", "format": "date-time"},
        "Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
        "FieldMask": {"type": "string", "description": "Comma-separated field paths."},
        "Value": {},  # any JSON value
        "Struct": {"type": "object", "additionalProperties": True},
        "ListValue": {"type": "array", "items": {}},
        "Empty": {"type": "object"},
        "Any": {"type": "object", "properties": {"@type": {"type": "string"}}},
    }
    return dict(fixed.get(short, {"type": "object"}))


_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    # proto3 JSON writes 64-bit integers as strings (JavaScript numbers lose precision).
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if not schema or (isinstance(kind, list) and "null" in kind):
        return schema  # takes null already: any JSON value, or a wrapper type
    inner = {k: v for k, v in schema.items() if k != "description"}
    return {"anyOf": [inner, {"type": "null"}]} | (
        {"description": schema["description"]} if "description" in schema else {}
    )


class Schemas:
    """Schemas of messages and enums, collected on demand as named definitions.

    `ref_prefix` is where the definitions will live: OpenAPI's components, or the `definitions`
    of a self-contained JSON Schema (an AsyncAPI payload).
    """

    def __init__(
        self,
        comments: dict[str, str],
        ref_prefix: str = "#/components/schemas/",
        choices: dict[str, list[str]] | None = None,
    ) -> None:
        self.comments = comments
        self.ref_prefix = ref_prefix
        self.choices = choices or {}  # string fields' accepted values, by field full name
        self.components: dict[str, Any] = {}

    def ref(self, name: str) -> dict[str, Any]:
        return {"$ref": self.ref_prefix + name}

    def _describe(self, schema: dict[str, Any], full_name: str) -> dict[str, Any]:
        if full_name in self.comments:
            schema["description"] = self.comments[full_name]
        return schema

    def message(self, desc: Descriptor, form: Form = Form.OUTPUT) -> dict[str, Any]:
        """A schema (a $ref, or inline for a well-known type) for a message type."""
        wkt = _wkt_schema(desc.full_name)
        if wkt is not None:
            return wkt
        name = desc.full_name + form.value
        if name not in self.components:
            self.components[name] = {}  # claimed first: messages may refer to themselves
            fields = [f for f in desc.fields if form is Form.OUTPUT or not contract.output_only(f)]
            props = {f.name: self.field(f, form) for f in fields}
            if form is not Form.OUTPUT:  # proto3 JSON reads null as the field's default
                props = {
                    f.name: props[f.name] if contract.required(f) else _nullable(props[f.name])
                    for f in fields
                }
            schema: dict[str, Any] = {
                # Distinct titles: code generators name their classes after them.
                "type": "object",
                "title": desc.name + form.name.title() if form.value else desc.name,
                "properties": props,
            }
            if form is Form.OUTPUT:
                names = [f.name for f in fields if not f.has_presence]
            else:
                names = [f.name for f in fields if form is Form.INPUT and contract.required(f)]
                # json_format refuses unknown keys: the API takes only the fields it declares.
                schema["additionalProperties"] = False
            if names:
                schema["required"] = names
            self.components[name] = self._describe(schema, desc.full_name)
        return self.ref(name)

    def enum(self, desc: EnumDescriptor) -> dict[str, Any]:
        """The enum's values by name, as a client may send them."""
        name = desc.full_name
        if name not in self.components:
            values = [v.name for v in desc.values]
            schema = self._describe({"type": "string", "enum": values}, name)
            notes = [
                f"- `{v}`: {self.comments[f'{name}.{v}']}"
                for v in values
                if f"{name}.{v}" in self.comments
            ]
            if notes:
                schema["description"] = "\n".join([schema.get("description", ""), "", *notes])
            self.components[name] = schema
        return self.ref(name)

    def _single(self, field: FieldDescriptor, form: Form) -> dict[str, Any]:
        """The schema of one value of the field (an element, for a repeated field)."""
        must = form is not Form.OUTPUT and contract.required(field)
        if field.message_type is not None:
            return self.message(field.message_type, Form.INPUT if form is Form.PATCH else form)
        if field.enum_type is not None:
            ref = self.enum(field.enum_type)
            if form is Form.OUTPUT:
                # A value added later must not break a client generated from this document.
                return {"anyOf": [ref, {"type": "string"}]}
            if must:  # the zero value means "unset", which a required field cannot be
                return {**ref, "not": {"const": field.enum_type.values_by_number[0].name}}
            return ref
        schema = dict(_SCALARS[field.type])
        max_length, _ = field_limits(field)
        if field.type == FieldDescriptor.TYPE_STRING:
            if max_length:
                schema["maxLength"] = max_length
            if must:  # the services trim strings, so blank is as good as empty
                schema |= {"minLength": 1, "pattern": r"\S"}
            if form is not Form.OUTPUT and field.full_name in self.choices:
                schema["enum"] = self.choices[field.full_name]
        elif schema["type"] == "integer":
            low, high = value_range(field)
            if low is not None:
                schema["minimum"] = low
            if high is not None:
                schema["maximum"] = high
            if must:  # zero is a number's "unset"
                schema["not"] = {"const": 0}
        return schema

    def field(
        self, field: FieldDescriptor, form: Form = Form.OUTPUT, *, described: bool = True
    ) -> dict[str, Any]:
        max_length, max_items = field_limits(field)
        if is_map_field(field):
            entry = field.message_type
            assert entry is not None  # a map field's type is its entry message
            schema: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self._single(entry.fields_by_name["value"], form),
            }
            if max_items:
                schema["maxProperties"] = max_items
            if max_length:  # on a map, max_length bounds the keys
                schema["propertyNames"] = {"maxLength": max_length}
        elif field.is_repeated:
            schema = {"type": "array", "items": self._single(field, form)}
            if max_items:
                schema["maxItems"] = max_items
            if form is not Form.OUTPUT and contract.required(field):
                schema["minItems"] = 1
        else:
            schema = self._single(field, form)
        if form is Form.OUTPUT and contract.output_only(field):
            schema["readOnly"] = True
        # OpenAPI 3.1 schemas are JSON Schema 2020-12: a description beside $ref is allowed.
        return self._describe(schema, field.full_name) if described else schema


# --- operations ----------------------------------------------------------------------------


def _resolve(desc: Descriptor, dotted: str) -> FieldDescriptor:
    """The field a dotted path such as "contact.id" names."""
    head, _, rest = dotted.partition(".")
    field = desc.fields_by_name[head]
    if not rest:
        return field
    assert field.message_type is not None, dotted
    return _resolve(field.message_type, rest)


def _openapi_path(template: str) -> str:
    # "{name=contacts/*}" is a google.api.http pattern; OpenAPI only knows "{name}".
    return re.sub(r"\{([^}=]+)=[^}]*\}", r"{\1}", template)


def first_sentence(text: str) -> str:
    line = text.split("\n\n", 1)[0].replace("\n", " ")
    head, dot, _ = line.partition(". ")
    return head + "." if dot else line


def _has_etag(desc: Descriptor) -> bool:
    return "etag" in desc.fields_by_name


def _mask_paths(route: Route) -> dict[str, Any] | None:
    """The schema of one update_mask path, for an update whose body is a resource message.

    The services take a top-level field name, or "<map>.<key>" for one entry of a map field
    (AIP-161); output-only fields are left out because naming them changes nothing.
    """
    desc = route.method.input_type
    mask = desc.fields_by_name.get("update_mask")
    body = desc.fields_by_name.get(route.body)
    if mask is None or body is None or body.message_type is None:
        return None
    fields = [f for f in body.message_type.fields if not contract.output_only(f)]
    choices: list[dict[str, Any]] = [{"type": "string", "enum": [f.name for f in fields]}]
    choices += [
        {"type": "string", "pattern": f"^{re.escape(f.name)}\\..+$"}
        for f in fields
        if is_map_field(f)
    ]
    return choices[0] if len(choices) == 1 else {"anyOf": choices}


def _param(
    name: str, where: str, field: FieldDescriptor, schemas: Schemas, item: dict[str, Any] | None
) -> dict[str, Any]:
    schema = schemas.field(field, Form.INPUT, described=False)
    if item is not None:
        schema["items"] = {**schema["items"], **item}
    must = where == "path" or contract.required(field)
    param = {"name": name, "in": where, "required": must, "schema": schema}
    if field.full_name in schemas.comments:
        param["description"] = schemas.comments[field.full_name]
    return param


def _parameters(route: Route, schemas: Schemas) -> list[dict[str, Any]]:
    desc = route.method.input_type
    params = [
        _param(name, "path", _resolve(desc, name), schemas, None) for name in route.path_params
    ]
    mask = _mask_paths(route)
    params += [
        _param(field.name, "query", field, schemas, mask if field.name == "update_mask" else None)
        for field in query_fields(route)
        if field.name != "etag"  # the etag travels in If-Match
    ]
    if route.http_method == "POST":
        params.append({"$ref": "#/components/parameters/IdempotencyKey"})
    if _has_etag(desc):
        params.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "description": "The resource's etag: the change happens only if the resource "
                "has not changed since (412 otherwise); `*`: only if it exists. One entity "
                "tag: a list is refused.",
                "schema": {
                    **schemas.field(desc.fields_by_name["etag"], Form.INPUT, described=False),
                    "pattern": f"^{IF_MATCH.pattern}$",
                },
            }
        )
    return params


def _header(description: str, schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


_INTEGER = {"type": "integer", "minimum": 0}
_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": _header(
        "The request's id: the caller's X-Request-Id when it is 1-128 characters of "
        "`A-Za-z0-9._:-`, otherwise a new one. Quote it when reporting a problem.",
        {"type": "string"},
    ),
    "RateLimit-Limit": _header("Requests the caller's key may burst.", _INTEGER),
    "RateLimit-Remaining": _header("Requests left in the current burst.", _INTEGER),
    "RateLimit-Reset": _header("Seconds until the burst is full again.", _INTEGER),
    "Retry-After": _header("Seconds to wait before retrying.", _INTEGER),
    "ETag": _header("The resource's etag, to send back in If-Match.", {"type": "string"}),
    "Location": _header(
        "The URL of the created resource.",
        {"type": "string", "format": "uri-reference"},
        required=False,
    ),
    "Idempotent-Replayed": _header(
        "`true` when this is the stored response of an earlier request with the same "
        "Idempotency-Key.",
        {"type": "string", "const": "true"},
        required=False,
    ),
    "WWW-Authenticate": _header("The scheme to authenticate with.", {"type": "string"}),
}
# Every answer carries its request id; every answer past authentication, the caller's rate.
_RATE_LIMITED = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def _headers(*names: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("X-Request-Id", *names, *optional):
        out[name] = {"$ref": f"#/components/headers/{name}"}
        if name in optional and _HEADERS[name]["required"]:
            out[name] = {**_HEADERS[name], "required": False}
    return out


# status: (response component, description, headers besides X-Request-Id)
_PROBLEMS: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: (
        "BadRequest",
        "The request is invalid; `errors` names each offending field.",
        _headers(*_RATE_LIMITED),
    ),
    401: (
        "Unauthorized",
        "No valid API key or token was given.",
        _headers("WWW-Authenticate"),
    ),
    403: ("Forbidden", "The caller lacks the required scope.", _headers()),
    404: (
        "NotFound",
        "The resource does not exist.",
        # A path that names no resource at all is refused before authentication.
        _headers(optional=_RATE_LIMITED),
    ),
    409: (
        "Conflict",
        "The request conflicts with the current state of the resource, or a request with the "
        "same Idempotency-Key is still running.",
        _headers(*_RATE_LIMITED),
    ),
    412: (
        "PreconditionFailed",
        "The If-Match etag is stale: the resource changed meanwhile.",
        _headers(*_RATE_LIMITED),
    ),
    413: ("ContentTooLarge", "The request body is too large.", _headers(*_RATE_LIMITED)),
    422: (
        "IdempotencyKeyReused",
        "The Idempotency-Key was already used with a different request.",
        _headers(*_RATE_LIMITED),
    ),
    429: (
        "TooManyRequests",
        "Too many requests; retry after the Retry-After delay.",
        _headers(*_RATE_LIMITED, "Retry-After"),
    ),
    503: (
        "ServiceUnavailable",
        "The service is unavailable for now; retry later.",
        _headers(*_RATE_LIMITED, optional=("Retry-After",)),
    ),
    504: (
        "GatewayTimeout",
        "The service did not answer in time; retry later.",
        _headers(*_RATE_LIMITED),
    ),
}


def _problem_statuses(route: Route) -> list[int]:
    statuses = [s for s in _PROBLEMS if s not in (412, 422)]
    if _has_etag(route.method.input_type):
        statuses.append(412)  # If-Match
    if route.http_method == "POST":
        statuses.append(422)  # Idempotency-Key
    return sorted(statuses)


def _operation(route: Route, op_id: str, schemas: Schemas) -> dict[str, Any]:
    rpc = route.method
    comment = schemas.comments.get(rpc.full_name, "")
    description = comment
    if route.required_scope:
        scope_note = f"Requires the `{route.required_scope}` scope."
        description = f"{comment}\n\n{scope_note}" if comment else scope_note
    op: dict[str, Any] = {"operationId": op_id, "tags": [route.service_name]}
    if comment:
        op["summary"] = first_sentence(comment)
    if description:
        op["description"] = description
    if route.required_scope:
        op["x-required-scope"] = route.required_scope
    op["parameters"] = _parameters(route, schemas)

    req = route.method.input_type
    if route.body:
        # A PATCH changes exactly the keys sent, so none of them is required.
        form = Form.PATCH if route.http_method == "PATCH" else Form.INPUT
        body = None if route.body == "*" else req.fields_by_name[route.body]
        if body is None:
            body_schema = schemas.message(req, form)
        elif body.message_type is not None and not body.is_repeated:
            body_schema = schemas.message(body.message_type, form)
        else:
            body_schema = schemas.field(body, Form.INPUT, described=False)
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        }

    resp = route.method.output_type
    responses: dict[str, Any] = {}
    success = success_status(route)
    if success == 204:
        responses["204"] = {"description": "Done; no content.", "headers": _headers(*_RATE_LIMITED)}
    else:
        names = [*_RATE_LIMITED, *(["ETag"] if _has_etag(resp) else [])]
        optional: tuple[str, ...] = ("Location",) if success == 201 else ()
        if route.http_method == "POST":
            optional += ("Idempotent-Replayed",)
        responses[str(success)] = {
            "description": schemas.comments.get(resp.full_name) or "OK",
            "headers": _headers(*names, optional=optional),
            "content": {"application/json": {"schema": schemas.message(resp)}},
        }
    for status in _problem_statuses(route):
        responses[str(status)] = {"$ref": f"#/components/responses/{_PROBLEMS[status][0]}"}
    op["responses"] = responses
    return op


def _link_creations(paths: dict[str, dict[str, Any]]) -> None:
    """OpenAPI links from each create (POST /x, 201) to the operations on what it made
    (/x/{id}): the new id, and the ETag as If-Match where the operation takes one."""
    for path, item in paths.items():
        created = item.get("post", {}).get("responses", {}).get("201")
        if created is None:
            continue
        links = {}
        for op in paths.get(f"{path}/{{id}}", {}).values():
            params = {"id": "$response.body#/id"}
            if "ETag" in created["headers"] and any(
                p.get("name") == "If-Match" for p in op["parameters"]
            ):
                params["header.If-Match"] = "$response.header.ETag"
            links[op["operationId"]] = {"operationId": op["operationId"], "parameters": params}
        if links:
            created["links"] = links


_API_KEY_SCOPES = gateway_pb2.ApiKey.DESCRIPTOR.fields_by_name["scopes"].full_name
LICENSE = {"name": "Apache 2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}
CONTACT = {"name": "Trellis CRM", "url": "https://trellis.dev"}


def build_openapi(
    route_table: RouteTable,
    *,
    title: str,
    version: str,
    server_url: str = "/",
    descriptor_set: DescriptorSetPath = DEFAULT_DESCRIPTOR_SET,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict) for every route of the table.

    `server_url` defaults to "/": relative to wherever the document is served, so the gateway
    that serves it is the server, whatever name callers reach it by.
    """
    comments = load_comments(descriptor_set)
    # The gateway grants a key only scopes the published RPCs require.
    published = {
        r.method.containing_service.full_name: r.method.containing_service for r in route_table
    }
    grantable = sorted(contract.grantable_scopes(published.values()))
    schemas = Schemas(comments, choices={_API_KEY_SCOPES: grantable})
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, dict[str, Any]] = {}
    op_ids: set[str] = set()
    for route in route_table:
        method = route.http_method.lower()
        path = _openapi_path(route.path_template)
        if method not in _OPENAPI_METHODS or method in paths.get(path, {}):
            continue  # a custom verb OpenAPI can't express, or a duplicate binding
        op_id = route.method.name
        if op_id in op_ids:  # an additional binding, or two services with one RPC name
            op_id = f"{route.service_name}_{route.method.name}"
            n = 2
            while op_id in op_ids:
                op_id, n = f"{route.service_name}_{route.method.name}_{n}", n + 1
        op_ids.add(op_id)
        paths.setdefault(path, {})[method] = _operation(route, op_id, schemas)
        service = route.method.containing_service
        if service.name not in tags:
            tags[service.name] = {"name": service.name}
            if service.full_name in comments:
                tags[service.name]["description"] = comments[service.full_name]

    _link_creations(paths)
    problem = schemas.message(common_pb2.Problem.DESCRIPTOR)
    # The gateway leaves `errors` out when no field is to blame.
    schemas.components[common_pb2.Problem.DESCRIPTOR.full_name]["required"].remove("errors")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "The REST/JSON API of Trellis CRM, generated from its protos. "
            "Errors are RFC 9457 problem documents; POSTs are safe to retry with an "
            "Idempotency-Key; updates and deletes take If-Match. The events partners can "
            "subscribe to are described by the AsyncAPI document at "
            "[/v1/asyncapi.json](/v1/asyncapi.json).",
            "contact": CONTACT,
            "license": LICENSE,
        },
        "servers": [{"url": server_url, "description": "This gateway"}],
        "tags": list(tags.values()),
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "responses": {
                name: {
                    "description": text,
                    "headers": headers,
                    "content": {"application/problem+json": {"schema": problem}},
                }
                for name, text, headers in _PROBLEMS.values()
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Makes the POST safe to retry: a repeat with the same key "
                    "and body returns the stored response; the same key with another body is "
                    "a 422.",
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": idempotency.MAX_KEY_LENGTH,
                        "pattern": "^[\\x20-\\x7E]+$",  # printable ASCII, as the gateway checks
                    },
                },
            },
            "headers": _HEADERS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (or an OIDC token): "
                    "`Authorization: Bearer <secret>`. Each operation names the scope it needs.",
                }
            },
        },
    }
