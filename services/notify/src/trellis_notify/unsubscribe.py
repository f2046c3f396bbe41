"""One-click unsubscribe (RFC 8058): the signed link of each email, and the page behind it.

The link names the tenant and the email it came in (no address: nothing personal in a URL),
signed with NOTIFY_UNSUBSCRIBE_KEY (HMAC-SHA256), so it works without logging in and cannot
be forged for another email; unsubscribing suppresses that email's address for its purpose. The
mail carries `List-Unsubscribe: <link>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`:
a mail client unsubscribes with a POST to the link. A GET only shows a confirmation form,
because link scanners and previews follow links. Served on notify's public HTTP port.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import logging
from dataclasses import dataclass

from aiohttp import web

from crmkit import db
from crmkit.ids import canonical_uuid
from trellis_notify import audience

log = logging.getLogger(__name__)

ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclass(frozen=True)
class Link:
    tenant_id: str
    email_id: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Links:
    def __init__(self, key: bytes, public_url: str) -> None:
        self._key = key
        self._base = public_url.rstrip("/")

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def url(self, tenant_id: str, email_id: str) -> str:
        payload = _b64(json.dumps([tenant_id, email_id], separators=(",", ":")).encode())
        return f"{self._base}/unsubscribe/{payload}.{self._mac(payload)}"

    def read(self, token: str) -> Link | None:
        """The email a token was made for; None when it is not one of ours."""
        payload, _, mac = token.partition(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            tenant_id, email_id = json.loads(_unb64(payload))
        except (ValueError, TypeError, binascii.Error):
            return None
        return Link(str(tenant_id), str(email_id))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>{title}</h1>{body}</main></body></html>
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=_PAGE.format(title=html.escape(title), body=body),
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; form-action 'self'",
            "Referrer-Policy": "no-referrer",
        },
    )


_INVALID = "<p>This unsubscribe link is not valid.</p>"


async def _recipient(pool: db.Pool, link: Link) -> tuple[str, str] | None:
    """(address, purpose) of the email a link came in."""
    if canonical_uuid(link.tenant_id) is None or canonical_uuid(link.email_id) is None:
        return None
    async with db.tenant_tx(pool, link.tenant_id) as conn:
        cur = await conn.execute(
            "SELECT to_address, purpose FROM emails WHERE tenant_id = %s AND id = %s",
            (link.tenant_id, link.email_id),
        )
        row = await cur.fetchone()
    return (row["to_address"], row["purpose"]) if row else None


def routes(links: Links, pool: db.Pool) -> list[web.RouteDef]:
    async def confirm(request: web.Request) -> web.Response:
        link = links.read(request.match_info["token"])
        found = await _recipient(pool, link) if link else None
        if found is None:
            return _page("Link not valid", _INVALID, 404)
        address, purpose = found
        return _page(
            "Unsubscribe",
            f"<p>Stop {html.escape(purpose.replace('_', ' '))} to {html.escape(address)}?</p>"
            f'<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            f'<button type="submit">Unsubscribe</button></form>',
        )

    async def unsubscribe(request: web.Request) -> web.Response:
        link = links.read(request.match_info["token"])
        found = await _recipient(pool, link) if link else None
        if link is None or found is None:
            return _page("Link not valid", _INVALID, 404)
        address, purpose = found
        async with db.tenant_tx(pool, link.tenant_id) as conn:
            await audience.suppress(
                conn, link.tenant_id, address, purpose, "unsubscribed", "one-click link"
            )
        log.info("unsubscribed", extra={"tenant_id": link.tenant_id, "purpose": purpose})
        return _page("Unsubscribed", "<p>You will not get these emails any more.</p>")

    return [
        web.get("/unsubscribe/{token}", confirm),
        web.post("/unsubscribe/{token}", unsubscribe),
    ]


class PublicHttp:
    """notify's public HTTP port (NOTIFY_HTTP_PORT): the unsubscribe links, nothing else."""

    def __init__(self, app_routes: list[web.RouteDef], host: str, port: int) -> None:
        self._routes = app_routes
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    async def run(self) -> None:
        app = web.Application(client_max_size=4096)
        app.add_routes(self._routes)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
