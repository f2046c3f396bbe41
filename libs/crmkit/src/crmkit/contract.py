"""What the protos declare, read off the descriptors: scopes, idempotency, field behaviour,
event types.

The protos are the one contract (DESIGN.md §1): an RPC's scope, whether it may be retried, and
what an event is called all live there as options, and everything that needs them (the
interceptor, the gateway's routes and documents, the outbox) reads them through this module.
`check_service` refuses, at start-up, a service whose contract would leave a call unguarded.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message

from crm.common.v1 import options_pb2

_IdempotencyLevel = descriptor_pb2.MethodOptions.IdempotencyLevel
NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
IDEMPOTENT = descriptor_pb2.MethodOptions.IDEMPOTENT

# crm.<domain>.<version>: the domain names the service, the version the event type's suffix.
_PACKAGE = re.compile(r"^crm\.([a-z][a-z0-9_]*)\.(v[0-9]+[a-z0-9]*)$")


class ContractError(Exception):
    """The protos declare something the platform cannot serve safely."""


def split_method(full_method: str) -> tuple[str, str]:
    """("pkg.Service", "Method") of a gRPC path "/pkg.Service/Method"."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


@cache
def method(full_method: str) -> MethodDescriptor:
    service, name = split_method(full_method)
    try:
        return descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        raise ContractError(f"{full_method} is not in any loaded proto") from None


def required_scope(desc: MethodDescriptor) -> str:
    """The scope an RPC declares; "" if none (which check_service refuses)."""
    return str(desc.GetOptions().Extensions[options_pb2.required_scope])


def idempotency_level(desc: MethodDescriptor) -> _IdempotencyLevel.ValueType:
    return desc.GetOptions().idempotency_level


def retry_safe(desc: MethodDescriptor) -> bool:
    """Whether a transport-level retry cannot do anything twice (the gRPC retry policy)."""
    return idempotency_level(desc) in (NO_SIDE_EFFECTS, IDEMPOTENT)


def takes_idempotency_key(desc: MethodDescriptor) -> bool:
    """Whether a repeat could do something twice (creates, custom actions): such calls record
    the caller's idempotency key with their effect. Reads have no effect to repeat, and an
    IDEMPOTENT call (update, delete) leaves the same state however often it runs."""
    return idempotency_level(desc) not in (NO_SIDE_EFFECTS, IDEMPOTENT)


# googleapis-common-protos ships no type stubs; importing registers the google.api.field_behavior
# extension, which FieldOptions then parse.
_field_behavior: Any = importlib.import_module("google.api.field_behavior_pb2")


@cache
def _behaviors(field: FieldDescriptor) -> frozenset[int]:
    return frozenset(field.GetOptions().Extensions[_field_behavior.field_behavior])


def output_only(field: FieldDescriptor) -> bool:
    """Set by the server (google.api.field_behavior OUTPUT_ONLY); ignored in requests."""
    return _field_behavior.OUTPUT_ONLY in _behaviors(field)


def required(field: FieldDescriptor) -> bool:
    """A request must set it (google.api.field_behavior REQUIRED): non-empty, non-zero."""
    return _field_behavior.REQUIRED in _behaviors(field)


@cache
def output_only_fields(desc: Descriptor) -> frozenset[str]:
    return frozenset(f.name for f in desc.fields if output_only(f))


def carries_secret(message: Message) -> bool:
    """Whether a message holds a secret anywhere: a set field marked with protobuf's standard
    `debug_redact` option (API key secrets, webhook signing secrets). Such an answer is shown
    once and never stored, not even to replay it for an idempotency key."""
    for desc, value in message.ListFields():
        if desc.GetOptions().debug_redact:
            return True
        if desc.message_type is None:
            continue
        if desc.message_type.GetOptions().map_entry:
            inner = desc.message_type.fields_by_name["value"].message_type is not None
            children = list(value.values()) if inner else []
        else:
            children = list(value) if desc.is_repeated else [value]
        if any(carries_secret(child) for child in children):
            return True
    return False


def domain_of(package: str) -> tuple[str, str]:
    """(domain, version) of a package named crm.<domain>.<version>."""
    m = _PACKAGE.match(package)
    if m is None:
        raise ContractError(f"package {package!r} is not named crm.<domain>.<version>")
    return m[1], m[2]


def check_service(service: ServiceDescriptor) -> None:
    """Refuse a service with an RPC the chassis could not guard: no scope, not unary, or a
    page size without a bound.

    An RPC without a declared scope would be open to every authenticated caller; streaming
    RPCs would bypass the per-call rules, which the chassis applies to unary calls; an
    unbounded page_size lets one call read a whole table.
    """
    problems = []
    for m in service.methods:
        if not required_scope(m):
            problems.append(f"{m.full_name} declares no (crm.common.v1.required_scope)")
        if m.client_streaming or m.server_streaming:
            problems.append(f"{m.full_name} is streaming; only unary RPCs are served")
        size = m.input_type.fields_by_name.get("page_size")
        if size is not None and not size.GetOptions().HasExtension(options_pb2.max_value):
            problems.append(f"{size.full_name} declares no (crm.common.v1.max_value)")
    if problems:
        raise ContractError("; ".join(problems))


def scopes(services: Iterable[ServiceDescriptor]) -> frozenset[str]:
    """Every scope the RPCs of these services require."""
    return frozenset(required_scope(m) for s in services for m in s.methods) - {""}


ADMIN = "admin"  # a tenant's administrator: every scope of its own tenant
PLATFORM = "platform:"  # the platform operator's scopes, never granted to a tenant's key


def grantable_scopes(services: Iterable[ServiceDescriptor]) -> frozenset[str]:
    """What a tenant's API key may be granted: the scopes these services require, and admin."""
    return frozenset(s for s in scopes(services) if not s.startswith(PLATFORM)) | {ADMIN}


def load_domain(domain: str) -> None:
    """Import the generated code of crm/<domain>/v1 so its descriptors are in the pool."""
    for module in (domain, "events"):
        try:
            importlib.import_module(f"crm.{domain}.v1.{module}_pb2")
        except ModuleNotFoundError as err:
            if module == domain:
                raise ContractError(f"no contract for {domain}: {err}") from None


def services_of_domain(domain: str) -> list[ServiceDescriptor]:
    """The gRPC services of the service named `domain`: those of crm/<domain>/v1/<domain>.proto."""
    load_domain(domain)
    file = descriptor_pool.Default().FindFileByName(f"crm/{domain}/v1/{domain}.proto")
    return list(file.services_by_name.values())


@dataclass(frozen=True)
class EventType:
    """An event message's names: its CloudEvents type and the parts of its NATS subject."""

    domain: str
    entity: str
    action: str
    ce_type: str
    schema: str  # ce-dataschema: the $id of the payload's schema in the AsyncAPI catalogue


@cache
def event_type(desc: Descriptor) -> EventType:
    """The type of an event message, from its (crm.common.v1.event) option and its package."""
    opts = desc.GetOptions()
    if not opts.HasExtension(options_pb2.event):
        raise ContractError(f"{desc.full_name} is not an event: it has no (crm.common.v1.event)")
    spec = opts.Extensions[options_pb2.event]
    domain, version = domain_of(desc.file.package)
    for part, what in ((spec.entity, "entity"), (spec.action, "action")):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", part):
            raise ContractError(f"{desc.full_name}: event {what} {part!r} is not a subject token")
    return EventType(
        domain=domain,
        entity=spec.entity,
        action=spec.action,
        ce_type=f"crm.{domain}.{spec.entity}.{spec.action}.{version}",
        schema=f"urn:trellis:schema:{desc.full_name}",
    )


def event_messages(domain: str) -> list[Descriptor]:
    """The event messages of crm/<domain>/v1/events.proto ([] when it has none)."""
    try:
        file = descriptor_pool.Default().FindFileByName(f"crm/{domain}/v1/events.proto")
    except KeyError:
        return []
    return [
        m
        for m in file.message_types_by_name.values()
        if m.GetOptions().HasExtension(options_pb2.event)
    ]
