"""Where webhooks may go: public addresses only, checked on the URL and after DNS resolution.

A tenant chooses the URL, so without these checks a webhook could make the service POST to
its own cluster (the database, the metadata endpoint at 169.254.169.254, a sidecar on
127.0.0.1). Every address is refused unless it is globally routable, IPv4 addresses hidden in
IPv6 ones (mapped ::ffff:a.b.c.d, 6to4, Teredo, NAT64, IPv4-compatible) included. The check is
made on the URL's host when it is an address literal, and on every address a name resolves to
at connection time (the resolver below), so a name that resolves to a private address, or is
rebound to one after the endpoint was saved, is refused too. Redirects are never followed.
`allow_private` (NOTIFY_WEBHOOK_ALLOW_PRIVATE) lifts the address rule and allows plain http:
for development and tests only.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class AddressRefusedError(ValueError):
    """The URL, or an address its host resolves to, is not one webhooks may be sent to."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
        return ipaddress.IPv4Address(int(address))
    return None


def refusal(address: Address) -> str | None:
    """Why webhooks may not go to `address`, or None when they may."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            why = refusal(inner)
            return f"{address} embeds {inner}: {why}" if why else None
        if address.scope_id:
            return f"{address} is scoped to a local interface"
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is a link-local address"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return f"{address} is not a unicast address"
    if not address.is_global:
        return f"{address} is a private address"
    return None


def check_address(host: str, allow_private: bool) -> None:
    """Raise AddressRefusedError when `host` is an address literal webhooks may not go to."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return  # a name: its addresses are checked when it is resolved
    why = refusal(address)
    if why and not allow_private:
        raise AddressRefusedError(why)


def check_url(url: str, allow_private: bool) -> str:
    """The URL's host, after checking its form and (for literals) its address.

    https only, unless `allow_private`; no user name or password (a secret in a URL ends up
    in logs); a host is required.
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number or out of range
    except ValueError as err:
        raise AddressRefusedError(f"not a valid URL: {err}") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise AddressRefusedError("must be an https URL")
    if parts.username is not None or parts.password is not None:
        raise AddressRefusedError("must not carry a user name or password")
    host = parts.hostname or ""
    if not host:
        raise AddressRefusedError("must name a host")
    if port == 0:
        raise AddressRefusedError("port 0 is not a port")
    check_address(host, allow_private)
    return host


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing every address webhooks may not go to.

    The connection is made to exactly the addresses returned here, so nothing can change
    between the check and the connection (DNS rebinding). A name with any refused address is
    refused whole: an attacker's name would otherwise list a public address beside a private
    one and hope the connector tries the private one.
    """

    def __init__(self, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self._allow_private = allow_private
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for entry in found:
                why = refusal(ipaddress.ip_address(entry["host"]))
                if why:
                    raise AddressRefusedError(f"{host} resolves to {why}")
        return found

    async def close(self) -> None:
        await self._inner.close()


def describe(err: BaseException) -> str:
    """A short, safe description of why a connection failed, for the delivery log."""
    inner: Any = err
    while inner is not None:
        if isinstance(inner, AddressRefusedError):
            return f"address refused: {inner}"
        inner = inner.__cause__ or inner.__context__
    return type(err).__name__
