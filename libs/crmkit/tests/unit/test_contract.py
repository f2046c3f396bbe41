"""The contract read off the descriptors, and the start-up checks that refuse unsafe ones."""

from __future__ import annotations

import importlib.resources

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

from crm.common.v1 import options_pb2
from crm.contacts.v1 import contacts_pb2, events_pb2
from crmkit import contract
from crmkit.context import Identity


def _compiled_files() -> list[descriptor_pb2.FileDescriptorProto]:
    raw = (importlib.resources.files("crm") / "descriptors.binpb").read_bytes()
    return [
        f
        for f in descriptor_pb2.FileDescriptorSet.FromString(raw).file
        if f.package.startswith("crm.")
    ]


def test_every_service_of_the_contract_passes_the_start_up_check() -> None:
    pool = descriptor_pool.Default()
    checked = []
    for file in _compiled_files():
        if file.service:
            contract.load_domain(file.package.split(".")[1])
        for service in file.service:
            desc = pool.FindServiceByName(f"{file.package}.{service.name}")
            contract.check_service(desc)
            checked.append(desc.full_name)
    assert "crm.contacts.v1.ContactsService" in checked
    assert "crm.gateway.v1.ApiKeysService" in checked


def test_every_event_message_names_its_type() -> None:
    for file in _compiled_files():
        if not file.name.endswith("/events.proto"):
            continue
        for message in file.message_type:
            desc = descriptor_pool.Default().FindMessageTypeByName(f"{file.package}.{message.name}")
            kind = contract.event_type(desc)
            assert kind.ce_type == f"crm.{kind.domain}.{kind.entity}.{kind.action}.v1"
    created = contract.event_type(events_pb2.ContactCreated.DESCRIPTOR)
    assert (created.ce_type, created.schema) == (
        "crm.contacts.contact.created.v1",
        "urn:trellis:schema:crm.contacts.v1.ContactCreated",
    )
    with pytest.raises(contract.ContractError, match="not an event"):
        contract.event_type(contacts_pb2.Contact.DESCRIPTOR)


def _service(
    method: descriptor_pb2.MethodDescriptorProto, page_size_options: bool = True
) -> ServiceDescriptor:
    """A throwaway service in a pool of its own: one RPC built as the test needs it."""
    pool = descriptor_pool.DescriptorPool()
    for dep in ("google/protobuf/descriptor.proto", "crm/common/v1/options.proto"):
        proto = descriptor_pb2.FileDescriptorProto()
        descriptor_pool.Default().FindFileByName(dep).CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="crm/probe/v1/probe.proto",
        package="crm.probe.v1",
        syntax="proto3",
        dependency=["crm/common/v1/options.proto"],
    )
    request = file.message_type.add(name="Request")
    size = request.field.add(name="page_size", number=1, type=5, label=1)
    if page_size_options:
        size.options.Extensions[options_pb2.max_value] = 500
    file.message_type.add(name="Response")
    service = file.service.add(name="ProbeService")
    service.method.add().CopyFrom(method)
    pool.Add(file)
    return pool.FindServiceByName("crm.probe.v1.ProbeService")


def _method(server_streaming: bool = False) -> descriptor_pb2.MethodDescriptorProto:
    return descriptor_pb2.MethodDescriptorProto(
        name="Probe",
        input_type=".crm.probe.v1.Request",
        output_type=".crm.probe.v1.Response",
        server_streaming=server_streaming,
    )


def test_an_rpc_without_a_scope_is_refused() -> None:
    with pytest.raises(contract.ContractError, match="Probe declares no"):
        contract.check_service(_service(_method()))


def test_streaming_rpcs_and_unbounded_pages_are_refused() -> None:
    method = _method(server_streaming=True)
    method.options.Extensions[options_pb2.required_scope] = "probe:read"
    with pytest.raises(contract.ContractError, match="streaming"):
        contract.check_service(_service(method))
    unary = _method()
    unary.options.Extensions[options_pb2.required_scope] = "probe:read"
    contract.check_service(_service(unary))
    with pytest.raises(contract.ContractError, match="page_size declares no"):
        contract.check_service(_service(unary, page_size_options=False))


def test_an_rpc_that_declares_no_scope_is_allowed_to_nobody() -> None:
    admin = Identity("t", "p", frozenset({"admin", "platform:admin", "contacts:read"}))
    assert not admin.allows("")
    assert admin.allows("contacts:write")
    assert not admin.allows("platform:tenants")  # a tenant's admin never has the platform's


def test_idempotency_comes_from_the_contract() -> None:
    service = contacts_pb2.DESCRIPTOR.services_by_name["ContactsService"]
    takes_key = {m.name for m in service.methods if contract.takes_idempotency_key(m)}
    retried = {m.name for m in service.methods if contract.retry_safe(m)}
    assert takes_key == {"CreateContact", "CreateCompany", "CreateFieldDefinition", "SetConsent"}
    assert retried == {m.name for m in service.methods} - takes_key
