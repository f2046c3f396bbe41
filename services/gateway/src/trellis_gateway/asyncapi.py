"""The AsyncAPI 3.0 event catalogue, generated from the event messages of the protos.

An event message is one with the `crm.common.v1.event` option; its package `crm.<domain>.<v>`
names the domain and version. Each event gets a channel (its NATS subject, the tenant id a
parameter), a `receive` operation for partners, and a message whose headers are the CloudEvents
binary-mode NATS headers the outbox relay sends and whose payload is the event's proto3 JSON.
Each payload is a self-contained JSON Schema whose `$id` is the event's `ce-dataschema`, so a
partner can validate an event, or generate a type, from that one schema.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor

import crm
from crm.common.v1 import options_pb2
from crmkit.contract import EventType, event_type
from trellis_gateway.openapi import (
    CONTACT,
    DEFAULT_DESCRIPTOR_SET,
    LICENSE,
    DescriptorSetPath,
    Schemas,
    first_sentence,
    load_comments,
)

_DRAFT_07 = "http://json-schema.org/draft-07/schema#"


def _messages(descs: Iterable[Descriptor]) -> Iterator[Descriptor]:
    for desc in descs:
        yield desc
        yield from _messages(desc.nested_types)


def generated_messages() -> list[Descriptor]:
    """Every message of the generated `crm` namespace package, wherever its parts were made."""
    found: list[Descriptor] = []
    for root in crm.__path__:
        for file in sorted(Path(root).rglob("*_pb2.py")):
            module = ".".join(("crm", *file.relative_to(root).with_suffix("").parts))
            found.extend(
                _messages(importlib.import_module(module).DESCRIPTOR.message_types_by_name.values())
            )
    return found


def _is_event(desc: Descriptor) -> bool:
    return desc.GetOptions().HasExtension(options_pb2.event)


def _payload(desc: Descriptor, comments: dict[str, str]) -> dict[str, Any]:
    """The event's proto3 JSON schema, standalone: its `$id` is what ce-dataschema names."""
    schemas = Schemas(comments, ref_prefix="#/definitions/")
    ref = schemas.message(desc)["$ref"]
    root = schemas.components.pop(desc.full_name)
    if ref in json.dumps([root, schemas.components]):  # a message that contains itself
        schemas.components[desc.full_name] = root
    payload: dict[str, Any] = {"$schema": _DRAFT_07, "$id": event_type(desc).schema, **root}
    if schemas.components:
        payload["definitions"] = dict(sorted(schemas.components.items()))
    return payload


def _headers(event: EventType) -> dict[str, Any]:
    """The CloudEvents attributes of this event that are the same on every message."""
    return {
        "allOf": [
            {"$ref": "#/components/schemas/CloudEventHeaders"},
            {
                "type": "object",
                "properties": {
                    "ce-type": {"const": event.ce_type},
                    "ce-source": {"const": f"/trellis/{event.domain}"},
                    "ce-dataschema": {"const": event.schema},
                },
            },
        ]
    }


_STRING = {"type": "string"}
_CLOUD_EVENT_HEADERS = {
    "type": "object",
    "description": "CloudEvents 1.0 binary mode: the event's attributes as NATS headers.",
    "properties": {
        "ce-specversion": {"const": "1.0", "description": "The CloudEvents version."},
        "ce-id": {**_STRING, "description": "The event's unique id (also Nats-Msg-Id)."},
        "ce-source": {**_STRING, "description": "The service that emitted the event."},
        "ce-type": {**_STRING, "description": "crm.<domain>.<entity>.<action>.<version>."},
        "ce-time": {
            **_STRING,
            "format": "date-time",
            "description": "When the change was committed (RFC 3339, UTC).",
        },
        "ce-subject": {**_STRING, "description": "The id of the record the event is about."},
        "ce-tenantid": {**_STRING, "description": "The tenant the record belongs to."},
        "ce-recordversion": {
            **_STRING,
            "pattern": "^[0-9]+$",
            "description": "The record's version after the change, a decimal integer. Apply "
            "an event only if its version is newer than the one you hold: redeliveries and "
            "replays then change nothing.",
        },
        "ce-dataschema": {
            **_STRING,
            "format": "uri",
            "description": "The `$id` of the payload's schema in this document.",
        },
        "Content-Type": {"const": "application/json"},
        "content-type": {
            "const": "application/json",
            "description": "Content-Type again, under the name HTTP-minded SDKs look for.",
        },
        "traceparent": {
            **_STRING,
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C trace context of the change, when it was traced.",
        },
        "Nats-Msg-Id": {
            **_STRING,
            "description": "Equal to ce-id: JetStream drops a re-published duplicate.",
        },
    },
    "required": [
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "ce-subject",
        "ce-tenantid",
        "ce-recordversion",
        "ce-dataschema",
        "Content-Type",
        "content-type",
        "Nats-Msg-Id",
    ],
}


def build_asyncapi(
    messages: Iterable[Descriptor] | None = None,
    *,
    title: str = "Trellis CRM events",
    version: str = "v1",
    descriptor_set: DescriptorSetPath = DEFAULT_DESCRIPTOR_SET,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a JSON-ready dict) of the events among `messages`
    (by default every message of the generated protos)."""
    comments = load_comments(descriptor_set)
    candidates = generated_messages() if messages is None else messages
    events = sorted(
        ((event_type(m), m) for m in candidates if _is_event(m)), key=lambda e: e[0].ce_type
    )
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    component_messages: dict[str, Any] = {}
    payloads: dict[str, Any] = {}
    for event, desc in events:
        name, key = desc.full_name, f"{event.domain}.{event.entity}.{event.action}"
        about = comments.get(name, "")
        described = {"summary": first_sentence(about), "description": about} if about else {}
        tags = [{"name": event.domain}]
        component_messages[name] = {
            "name": desc.name,
            "title": event.ce_type,
            "contentType": "application/json",
            "headers": _headers(event),
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "tags": tags,
            **described,
        }
        payloads[name] = _payload(desc, comments)
        channels[key] = {
            "address": f"crm.events.{{tenant_id}}.{key}",
            "title": event.ce_type,
            "messages": {desc.name: {"$ref": f"#/components/messages/{name}"}},
            "parameters": {"tenant_id": {"$ref": "#/components/parameters/tenant_id"}},
            **({"description": about} if about else {}),
        }
        operations[f"receive.{key}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{desc.name}"}],
            "summary": described.get("summary", event.ce_type),
            "tags": tags,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": version,
            "description": "The events of Trellis CRM, published to NATS JetStream (stream "
            "`CRM_EVENTS`) as CloudEvents 1.0 in binary mode: the attributes are NATS "
            "headers, the data is the event's proto3 JSON (snake_case field names, every field "
            "printed, 64-bit integers as strings, enums by name, times in RFC 3339). Each "
            "record's events carry its version in `ce-recordversion`; delivery is at least "
            "once, so apply an event only when its version is newer than the one you hold.",
            "contact": CONTACT,
            "license": LICENSE,
            "tags": [{"name": d} for d in sorted({e.domain for e, _ in events})],
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "{host}",
                "protocol": "nats",
                "description": "The platform's NATS server with JetStream. A partner's "
                "credentials allow subscribing to `crm.events.<its tenant id>.>` only.",
                "variables": {
                    "host": {
                        "default": "localhost:4222",
                        "description": "host:port of the NATS server you were given.",
                    }
                },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {"CloudEventHeaders": _CLOUD_EVENT_HEADERS, **payloads},
            "messages": component_messages,
            "parameters": {
                "tenant_id": {"description": "The id of the tenant whose records changed."}
            },
        },
    }
