"""Capture what the platform sends to the outside world, on this machine: mail (an SMTP server,
aiosmtpd) and HTTP requests (a webhook receiver, aiohttp). Nothing leaves 127.0.0.1.

`make run` runs `python -m trellis_devstack.capture` beside the services: each message is kept
as a .eml file and each request as a .json file under the given folder, and a line about it
is printed, so what was sent can be read there. Tests use `Mailbox` as their SMTP sink.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Mailbox:
    """An SMTP server on 127.0.0.1 that keeps every message it accepts; `refuse` names the
    recipients it refuses for good (550), as a mail server does an unknown address."""

    port: int
    folder: Path | None = None
    refuse: Callable[[str], bool] = lambda address: False
    messages: list[EmailMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # each message as it came over the wire
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.refuse(address):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.raw.append(raw)
        self.arrived.set()
        if self.folder is not None:
            path = self.folder / f"{time.time_ns()}.eml"
            await asyncio.to_thread(_save, path, raw)
            print(
                f"mail to {', '.join(envelope.rcpt_tos)}: {message['Subject']}  ({path})",
                flush=True,
            )
        return "250 Message accepted"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="capture.local", decode_data=False),
            "127.0.0.1",
            self.port,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def _save(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def _webhooks(folder: Path) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        path = folder / f"{time.time_ns()}.json"
        record: dict[str, Any] = {"path": request.path, "headers": dict(request.headers)}
        try:
            record["body"] = json.loads(body)
            what = record["body"].get("type", "")
        except ValueError:
            record["body"] = body.decode(errors="replace")
            what = ""
        await asyncio.to_thread(_save, path, json.dumps(record, indent=2).encode())
        print(f"webhook {request.method} {request.path} {what}  ({path})", flush=True)
        return web.Response(text="captured")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


async def _serve(smtp_port: int, http_port: int, folder: Path) -> None:
    mailbox = Mailbox(smtp_port, folder / "mail")
    await mailbox.start()
    runner = web.AppRunner(_webhooks(folder / "webhooks"), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    print(
        f"capturing mail on 127.0.0.1:{smtp_port} and webhooks on http://127.0.0.1:{http_port}/"
        f" into {folder}",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await mailbox.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="trellis_devstack.capture")
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--folder", type=Path, default=Path(".data/capture"))
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how `make run` stops
        asyncio.run(_serve(args.smtp_port, args.http_port, args.folder))


if __name__ == "__main__":
    main()
