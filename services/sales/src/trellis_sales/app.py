"""Wiring only: what the chassis needs to run the sales service."""

from __future__ import annotations

from crm.sales.v1 import sales_pb2, sales_pb2_grpc
from crmkit.client import Callee
from crmkit.clock import Clock, system_clock
from crmkit.consumer import Consumer
from crmkit.migrations import migrations_dir
from crmkit.periodic import Periodic
from crmkit.service import Runtime, ServiceDefinition, Worker
from trellis_sales import events, leads
from trellis_sales.api import SalesApi
from trellis_sales.config import SalesSettings
from trellis_sales.conversion import Contacts

# Packaged in the wheel (the image); services/sales/migrations in a source checkout.
MIGRATIONS = migrations_dir(__file__)


def definition(clock: Clock = system_clock) -> ServiceDefinition:
    """The service on a clock: the system's, or a test's (decay, sales cycles, history)."""

    async def wire(runtime: Runtime) -> list[Worker]:
        settings = runtime.settings
        assert isinstance(settings, SalesSettings)
        address = settings.callees().get("contacts")
        if not address:
            raise SystemExit("SALES_CONTACTS_ADDR is not set: the contacts service's host:port")
        callee = Callee("contacts", address, settings.contacts_timeout_seconds)
        runtime.on_stop.append(callee.close)
        api = SalesApi(runtime.pool, Contacts(callee), clock)
        sales_pb2_grpc.add_SalesServiceServicer_to_server(api, runtime.server)
        assert runtime.js is not None  # the service uses the bus
        return [
            Consumer(
                runtime.js,
                runtime.pool,
                name="sales-contacts",
                filter_subjects=events.CONTACT_SUBJECTS,
                handler=events.contacts_handler(clock),
            ),
            Consumer(
                runtime.js,
                runtime.pool,
                name="sales-engagement",
                filter_subjects=settings.engagement_subject_list(),
                handler=events.engagement_handler(clock),
            ),
            Periodic(
                "sales-rescore",
                settings.rescore_interval_seconds,
                lambda: leads.rescore_due(runtime.pool, clock()),
            ),
        ]

    return ServiceDefinition(
        name="sales",
        migrations_dir=MIGRATIONS,
        grpc_services=[sales_pb2.DESCRIPTOR.services_by_name["SalesService"].full_name],
        wire=wire,
    )


DEFINITION = definition()
