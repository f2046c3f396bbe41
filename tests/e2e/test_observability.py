"""Metrics every process exposes, checked by Prometheus's own promtool."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest

from tests.helpers import Platform, Tenant

_GET_CONTACT = (
    'trellis_grpc_server_requests_total{grpc_code="NOT_FOUND",grpc_method="GetContact",'
    'grpc_service="crm.contacts.v1.ContactsService"}'
)


def _scrape(platform: Platform, service: str) -> str:
    port = platform.stack.ports.metrics[service]
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200
    return r.text


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("service", ["gateway", "contacts"])
def test_metrics_pass_promtool(platform: Platform, service: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs it (Debian package prometheus)"
    text = _scrape(platform, service)
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


async def test_a_grpc_call_counts_with_method_and_code(platform: Platform, tenant: Tenant) -> None:
    before = _sample(_scrape(platform, "contacts"), _GET_CONTACT)
    async with tenant.client() as api:
        for _ in range(3):
            r = await api.get("/v1/contacts/01900000-0000-7000-8000-000000000000")
            assert r.status_code == 404
    after = _sample(_scrape(platform, "contacts"), _GET_CONTACT)
    assert after - before == 3
    gateway = _scrape(platform, "gateway")
    assert re.search(
        r'trellis_http_requests_total\{method="GET",route="/v1/contacts/\{id\}",status="404"\} [1-9]',
        gateway,
    )
