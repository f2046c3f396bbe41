"""Wiring only: what the chassis needs to run the contacts service."""

from __future__ import annotations

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit.migrations import migrations_dir
from crmkit.service import Runtime, ServiceDefinition, Worker
from trellis_contacts.api import ContactsApi

# Packaged in the wheel (the image); services/contacts/migrations in a source checkout.
MIGRATIONS = migrations_dir(__file__)


async def wire(runtime: Runtime) -> list[Worker]:
    contacts_pb2_grpc.add_ContactsServiceServicer_to_server(
        ContactsApi(runtime.pool), runtime.server
    )
    return []  # no consumers yet; the chassis adds the outbox relay


DEFINITION = ServiceDefinition(
    name="contacts",
    migrations_dir=MIGRATIONS,
    grpc_services=[contacts_pb2.DESCRIPTOR.services_by_name["ContactsService"].full_name],
    wire=wire,
)
