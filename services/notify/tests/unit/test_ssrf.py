"""The address rules of webhooks: only globally routable unicast addresses, IPv4 addresses
hidden in IPv6 ones included; https only; no credentials in URLs."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from trellis_notify import ssrf

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "0.0.0.0",  # noqa: S104 - an address refused, not one bound
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.169.254",  # cloud metadata: link-local
    "224.0.0.1",
    "255.255.255.255",
    "240.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo of 127.0.0.1
    "2001:db8::1",  # documentation
]
ALLOWED = [
    "93.184.215.14",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:93.184.215.14",
    "2002:5db8:d70e::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_private_loopback_link_local_and_embedded_addresses_are_refused(address: str) -> None:
    assert ssrf.refusal(ipaddress.ip_address(address)) is not None
    with pytest.raises(ssrf.AddressRefusedError):
        ssrf.check_url(
            f"https://[{address}]/hook" if ":" in address else f"https://{address}/hook", False
        )


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert ssrf.refusal(ipaddress.ip_address(address)) is None


def test_the_test_allowance_lifts_the_address_rule_and_allows_http() -> None:
    assert ssrf.check_url("http://127.0.0.1:8080/hook", True) == "127.0.0.1"
    with pytest.raises(ssrf.AddressRefusedError, match="https"):
        ssrf.check_url("http://example.com/hook", False)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "https"),
        ("https:///path", "host"),
        ("https://user:pass@example.com/", "user name or password"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://example.com:0/", "port 0"),
        ("https://[::1/", "not a valid URL"),
        ("https://0x7f000001/", None),  # a name, not an address: checked when resolved
    ],
)
def test_url_forms(url: str, why: str | None) -> None:
    if why is None:
        assert ssrf.check_url(url, False) == "0x7f000001"
        return
    with pytest.raises(ssrf.AddressRefusedError, match=why):
        ssrf.check_url(url, False)


class _Names(AbstractResolver):
    """DNS as the outside world would answer it."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in self.answers[host]
        ]

    async def close(self) -> None:
        return None


async def test_a_name_resolving_to_any_refused_address_is_refused() -> None:
    names = _Names(
        {
            "internal.example": ["10.1.2.3"],
            "rebound.example": ["93.184.215.14", "127.0.0.1"],
            "mapped.example": ["::ffff:192.168.0.1"],
            "public.example": ["93.184.215.14"],
        }
    )
    guarded = ssrf.GuardedResolver(False, names)
    for name in ("internal.example", "rebound.example", "mapped.example"):
        with pytest.raises(ssrf.AddressRefusedError, match=f"{name} resolves to"):
            await guarded.resolve(name, 443)
    assert [r["host"] for r in await guarded.resolve("public.example", 443)] == ["93.184.215.14"]
    allowed = ssrf.GuardedResolver(True, names)
    assert [r["host"] for r in await allowed.resolve("internal.example", 443)] == ["10.1.2.3"]
