"""The OpenAPI 3.1 document of the REST API, generated from the same descriptors as the routes.

Schemas follow the proto3 JSON mapping as the gateway speaks it (snake_case names, int64 as
strings, enums by name); descriptions are the proto comments, read from the FileDescriptorSet
that `make proto` writes with source info (descriptions are simply left out without it).
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections.abc import Iterator
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from crm.common.v1 import common_pb2
from crmkit.limits import field_limits, is_map_field
from trellis_gateway.routes import Route, RouteTable, query_fields, success_status

DescriptorSetPath = str | os.PathLike[str] | Traversable
SourcePath = tuple[int, ...]
Element = tuple[str, SourcePath]

DEFAULT_DESCRIPTOR_SET: Traversable = importlib.resources.files("crm") / "descriptors.binpb"

_OPENAPI_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_PROBLEM_STATUSES = {
    "400": "The request is invalid; `errors` names each offending field.",
    "401": "No valid API key or token was given.",
    "403": "The caller lacks the required scope.",
    "404": "The resource does not exist.",
    "409": "The request conflicts with the current state of the resource.",
    "412": "The If-Match ETag is stale: the resource changed meanwhile.",
    "413": "The request body is too large.",
    "422": "The Idempotency-Key was already used with a different request body.",
    "429": "Too many requests; retry after the Retry-After delay.",
    "503": "The service is unavailable for now; retry later.",
}


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


# --- schemas -------------------------------------------------------------------------------


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


_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    # proto3 JSON writes 64-bit integers as strings (JavaScript numbers lose precision).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


class _Schemas:
    """components/schemas, filled on demand as messages and enums are referenced."""

    def __init__(self, comments: dict[str, str]) -> None:
        self.comments = comments
        self.components: dict[str, Any] = {}

    def _describe(self, schema: dict[str, Any], full_name: str) -> dict[str, Any]:
        if full_name in self.comments:
            schema["description"] = self.comments[full_name]
        return schema

    def message(self, desc: Descriptor) -> dict[str, Any]:
        """A schema (a $ref, or inline for a well-known type) for a message type."""
        wkt = _wkt_schema(desc.full_name)
        if wkt is not None:
            return wkt
        name = desc.full_name
        if name not in self.components:
            self.components[name] = {}  # claimed first: messages may refer to themselves
            props = {f.name: self.field(f) for f in desc.fields}
            self.components[name] = self._describe(
                {"type": "object", "title": desc.name, "properties": props}, name
            )
        return _ref(name)

    def enum(self, desc: EnumDescriptor) -> dict[str, Any]:
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
        return _ref(name)

    def _single(self, field: FieldDescriptor, max_length: int) -> dict[str, Any]:
        """The schema of one value of the field (an element, for a repeated field)."""
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        schema = dict(_SCALARS[field.type])
        if max_length and field.type == FieldDescriptor.TYPE_STRING:
            schema["maxLength"] = max_length
        return schema

    def field(self, field: FieldDescriptor, *, described: bool = True) -> dict[str, Any]:
        max_length, max_items = field_limits(field)
        if is_map_field(field):
            entry = field.message_type
            assert entry is not None  # a map field's type is its entry message
            schema: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self._single(entry.fields_by_name["value"], 0),
            }
            if max_items:
                schema["maxProperties"] = max_items
            if max_length:  # on a map, max_length bounds the keys
                schema["propertyNames"] = {"maxLength": max_length}
        elif field.is_repeated:
            schema = {"type": "array", "items": self._single(field, max_length)}
            if max_items:
                schema["maxItems"] = max_items
        else:
            schema = self._single(field, max_length)
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


def _first_sentence(text: str) -> str:
    line = text.split("\n\n", 1)[0].replace("\n", " ")
    head, dot, _ = line.partition(". ")
    return head + "." if dot else line


def _has_etag(desc: Descriptor) -> bool:
    return "etag" in desc.fields_by_name


def _param(name: str, where: str, field: FieldDescriptor, schemas: _Schemas) -> dict[str, Any]:
    param = {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schemas.field(field, described=False),
    }
    if field.full_name in schemas.comments:
        param["description"] = schemas.comments[field.full_name]
    return param


def _parameters(route: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    desc = route.method.input_type
    params = [_param(name, "path", _resolve(desc, name), schemas) for name in route.path_params]
    params += [
        _param(field.name, "query", field, schemas)
        for field in query_fields(route)
        if field.name != "etag"  # the etag travels in If-Match
    ]
    if route.http_method == "POST":
        params.append({"$ref": "#/components/parameters/IdempotencyKey"})
    if _has_etag(desc):
        params.append({"$ref": "#/components/parameters/IfMatch"})
    return params


def _operation(route: Route, op_id: str, schemas: _Schemas) -> dict[str, Any]:
    rpc = route.method
    comment = schemas.comments.get(rpc.full_name, "")
    description = comment
    if route.required_scope:
        scope_note = f"Requires the `{route.required_scope}` scope."
        description = f"{comment}\n\n{scope_note}" if comment else scope_note
    op: dict[str, Any] = {"operationId": op_id, "tags": [route.service_name]}
    if comment:
        op["summary"] = _first_sentence(comment)
    if description:
        op["description"] = description
    if route.required_scope:
        op["x-required-scope"] = route.required_scope
    op["parameters"] = _parameters(route, schemas)

    req = route.method.input_type
    if route.body:
        if route.body == "*":
            body_schema = schemas.message(req)
        else:
            body_schema = schemas.field(req.fields_by_name[route.body], described=False)
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        }

    resp = route.method.output_type
    responses: dict[str, Any] = {}
    success = success_status(route)
    if success == 204:
        responses["204"] = {"description": "Done; no content."}
    else:
        ok: dict[str, Any] = {
            "description": schemas.comments.get(resp.full_name) or "OK",
            "content": {"application/json": {"schema": schemas.message(resp)}},
        }
        if _has_etag(resp):
            ok["headers"] = {"ETag": {"$ref": "#/components/headers/ETag"}}
        responses[str(success)] = ok
    for status, text in _PROBLEM_STATUSES.items():
        # A Reference Object may override the description in OpenAPI 3.1.
        responses[status] = {"$ref": "#/components/responses/Problem", "description": text}
    op["responses"] = responses
    return op


def build_openapi(
    route_table: RouteTable,
    *,
    title: str,
    version: str,
    server_url: str | None = None,
    descriptor_set: DescriptorSetPath = DEFAULT_DESCRIPTOR_SET,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict) for every route of the table."""
    comments = load_comments(descriptor_set)
    schemas = _Schemas(comments)
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

    problem = schemas.message(common_pb2.Problem.DESCRIPTOR)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    doc |= {
        "tags": list(tags.values()),
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem document.",
                    "content": {"application/problem+json": {"schema": problem}},
                }
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Makes the POST safe to retry: a repeat with the same key "
                    "and body returns the stored response; the same key with another body is "
                    "a 422.",
                    "schema": {"type": "string"},
                },
                "IfMatch": {
                    "name": "If-Match",
                    "in": "header",
                    "required": False,
                    "description": "The resource's etag: the change happens only if the "
                    "resource has not changed since (412 otherwise).",
                    "schema": {"type": "string"},
                },
            },
            "headers": {
                "ETag": {
                    "description": "The resource's etag, to send back in If-Match.",
                    "schema": {"type": "string"},
                }
            },
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
    return doc
