"""The AsyncAPI 3.0 event catalogue: valid against the official schema, one channel, operation and
message per event message of the protos, headers as the relay writes them, and payload schemas
that validate an event's proto3 JSON on their own."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor

from crm.common.v1 import common_pb2, options_pb2
from crm.contacts.v1 import contacts_pb2, events_pb2
from crmkit import bus
from crmkit.contract import ContractError, event_type
from trellis_gateway.asyncapi import build_asyncapi, generated_messages

_ROOT = Path(__file__).resolve().parents[4]

# The official AsyncAPI 3.0 JSON Schema (asyncapi/spec-json-schemas). No PyPI package installs
# it; the source distribution of asyncapi-python-parser-jonaslagoni 0.5.0 carries a copy, which
# `make test` downloads into build/third_party (third-party files stay out of the repository);
# its hash is checked here.
_ARCHIVE = _ROOT / "build" / "third_party" / "asyncapi_python_parser_jonaslagoni-0.5.0.tar.gz"
_MEMBER = "asyncapi_python_parser_jonaslagoni-0.5.0/generator/definitions/3.0.0-without-$id.json"
_SHA256 = "76d091c9001bd90ae0f92add0f9e31d9517e63bd5ea6e49faa366bcd79d159d4"


@pytest.fixture(scope="module")
def official_schema() -> dict[str, Any]:
    assert _ARCHIVE.is_file(), "`make test` downloads the AsyncAPI schema: run `make third-party`"
    with tarfile.open(_ARCHIVE) as sdist:
        member = sdist.extractfile(_MEMBER)
        assert member is not None
        raw = member.read()
    assert hashlib.sha256(raw).hexdigest() == _SHA256
    schema: dict[str, Any] = json.load(io.BytesIO(raw))
    return schema


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_asyncapi()


def _errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(instance)]


def test_document_is_valid_asyncapi_3(doc: dict[str, Any], official_schema: dict[str, Any]) -> None:
    assert _errors(official_schema, doc) == []
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["license"]["name"]
    assert doc["defaultContentType"] == "application/json"


def test_validator_catches_what_we_rely_on(
    doc: dict[str, Any], official_schema: dict[str, Any]
) -> None:
    # The schema is this suite's oracle: check it refuses what AsyncAPI 3.0 refuses.
    publish = copy.deepcopy(doc)
    next(iter(publish["operations"].values()))["action"] = "publish"  # AsyncAPI 2 wording
    assert _errors(official_schema, publish)
    no_protocol = copy.deepcopy(doc)
    del no_protocol["servers"]["nats"]["protocol"]
    assert _errors(official_schema, no_protocol)


def test_one_channel_operation_and_message_per_event(doc: dict[str, Any]) -> None:
    events = [m for m in generated_messages() if m.GetOptions().HasExtension(options_pb2.event)]
    assert events_pb2.ContactCreated.DESCRIPTOR in events
    assert len(doc["channels"]) == len(doc["operations"]) == len(events)

    channel = doc["channels"]["contacts.contact.created"]
    assert channel["address"] == "crm.events.{tenant_id}.contacts.contact.created"
    assert channel["parameters"] == {"tenant_id": {"$ref": "#/components/parameters/tenant_id"}}
    assert channel["description"].startswith("A contact was created")
    assert channel["messages"] == {
        "ContactCreated": {"$ref": "#/components/messages/crm.contacts.v1.ContactCreated"}
    }
    operation = doc["operations"]["receive.contacts.contact.created"]
    assert operation["action"] == "receive"
    assert operation["channel"] == {"$ref": "#/channels/contacts.contact.created"}
    assert operation["messages"] == [
        {"$ref": "#/channels/contacts.contact.created/messages/ContactCreated"}
    ]
    domains = sorted({event_type(m).domain for m in events})
    assert doc["info"]["tags"] == [{"name": d} for d in domains]  # grouped by domain

    server = doc["servers"]["nats"]
    assert (server["host"], server["protocol"]) == ("{host}", "nats")
    assert "default" in server["variables"]["host"]


def _resolve(doc: dict[str, Any], node: Any) -> Any:
    """`node` with every local $ref replaced by its target."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(doc, target)
        return {k: _resolve(doc, v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(doc, v) for v in node]
    return node


def test_headers_are_what_the_relay_writes(doc: dict[str, Any]) -> None:
    event = event_type(events_pb2.ContactUpdated.DESCRIPTOR)
    message = doc["components"]["messages"]["crm.contacts.v1.ContactUpdated"]
    headers_schema = _resolve(doc, message["headers"])
    written = bus.ce_headers(
        event_id="01900000-0000-7000-8000-000000000001",
        ce_type=event.ce_type,
        source="/trellis/contacts",
        subject="01900000-0000-7000-8000-000000000002",
        tenant_id="01900000-0000-7000-8000-000000000003",
        time=datetime(2024, 5, 1, 12, tzinfo=UTC),
        record_version=7,
        dataschema=event.schema,
    )
    assert _errors(headers_schema, written) == []
    assert (
        _errors(
            headers_schema, written | {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
        )
        == []
    )
    # Another event's type, a version that is no integer, a header left out: all refused.
    assert _errors(headers_schema, written | {"ce-type": "crm.contacts.contact.created.v1"})
    assert _errors(headers_schema, written | {"ce-recordversion": "v7"})
    assert _errors(headers_schema, {k: v for k, v in written.items() if k != "ce-subject"})


def _event_json(msg: Any) -> Any:
    """The data the relay publishes: proto3 JSON with every field printed."""
    return json.loads(
        json_format.MessageToJson(
            msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    )


def test_payload_schema_stands_alone(doc: dict[str, Any]) -> None:
    payload = doc["components"]["schemas"]["crm.contacts.v1.ContactCreated"]
    assert payload["$id"] == event_type(events_pb2.ContactCreated.DESCRIPTOR).schema
    message = doc["components"]["messages"]["crm.contacts.v1.ContactCreated"]
    assert message["payload"] == {"$ref": "#/components/schemas/crm.contacts.v1.ContactCreated"}
    # Copied out of the document, the schema still resolves: its references are its own.
    alone = json.loads(json.dumps(payload))
    jsonschema.Draft7Validator.check_schema(alone)
    event = events_pb2.ContactCreated(
        metadata=common_pb2.EventMetadata(event_id="e1", tenant_id="t1", actor="k1"),
        contact=contacts_pb2.Contact(
            id="c1",
            first_name="Ada",
            version=3,
            lifecycle_stage=contacts_pb2.LIFECYCLE_STAGE_LEAD,
        ),
    )
    data = _event_json(event)
    assert data["contact"]["version"] == "3"  # int64 as a string
    assert data["contact"]["emails"] == []  # cleared fields printed too
    assert _errors(alone, data) == []
    assert set(alone["definitions"]["crm.contacts.v1.Contact"]["required"]) >= {"emails", "version"}
    # A stage added later still validates; a number where a string belongs does not.
    assert _errors(alone, data | {"contact": data["contact"] | {"lifecycle_stage": "NEW"}}) == []
    assert _errors(alone, data | {"contact": data["contact"] | {"version": 3}})


def _event_in(package: str, name: str) -> Descriptor:
    """A throwaway event message `name` (entity "thing", action "made") in `package`."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}/{name.lower()}.proto",
        package=package,
        syntax="proto3",
        dependency=["crm/common/v1/options.proto"],
    )
    msg = fdp.message_type.add(name=name)
    msg.field.add(name="count", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64)
    spec = msg.options.Extensions[options_pb2.event]
    spec.entity, spec.action = "thing", "made"
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName(fdp.name)
    except KeyError:
        file = pool.AddSerializedFile(fdp.SerializeToString())
    return file.message_types_by_name[name]


def test_events_group_by_domain_and_version() -> None:
    made = _event_in("crm.asynctest.v2", "ThingMade")
    doc = build_asyncapi([events_pb2.ContactCreated.DESCRIPTOR, made])
    assert doc["info"]["tags"] == [{"name": "asynctest"}, {"name": "contacts"}]
    channel = doc["channels"]["asynctest.thing.made"]
    assert channel["address"] == "crm.events.{tenant_id}.asynctest.thing.made"
    assert channel["title"] == "crm.asynctest.thing.made.v2"
    headers = doc["components"]["messages"]["crm.asynctest.v2.ThingMade"]["headers"]["allOf"][1]
    assert headers["properties"]["ce-source"] == {"const": "/trellis/asynctest"}
    assert "description" not in channel  # no comments in a descriptor built here


def test_an_event_outside_crm_domain_packages_is_refused() -> None:
    with pytest.raises(ContractError, match=r"crm\.<domain>"):
        build_asyncapi([_event_in("acme.things", "StrayThing")])
