"""The webhook sender against real servers on 127.0.0.1: what the address rules refuse after
DNS resolution, redirects not followed, timeouts and snippets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp import web

from trellis_notify.sender import Sender

from .support import Receiver


def _sender(allow_private: bool, timeout: float = 2) -> Sender:
    return Sender(allow_private=allow_private, timeout=timeout, concurrency=4, per_endpoint=2)


def _now() -> datetime:
    return datetime.now(UTC)


async def test_names_resolving_to_loopback_are_refused_without_the_allowance(
    receiver: Receiver,
) -> None:
    sender = _sender(allow_private=False)
    try:
        for url in (
            f"https://localhost:{receiver.port}/hooks",  # resolves to 127.0.0.1 / ::1
            f"https://127.0.0.1:{receiver.port}/hooks",
            f"https://[::ffff:127.0.0.1]:{receiver.port}/hooks",
            f"http://localhost:{receiver.port}/hooks",
        ):
            got = await sender.post(url, b"{}", {}, _now)
            assert got.status == 0
            assert got.error.startswith("address refused"), (url, got.error)
    finally:
        await sender.close()
    assert receiver.received == []


async def test_redirects_are_not_followed(receiver: Receiver) -> None:
    target = Receiver()
    await target.start()

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(target.url)

    receiver.script = redirect
    sender = _sender(allow_private=True)
    try:
        got = await sender.post(receiver.url, b"{}", {}, _now)
    finally:
        await sender.close()
        await target.stop()
    assert got.status == 302
    assert got.error == "redirects are not followed"
    assert target.received == []


async def test_a_slow_answer_times_out_and_a_long_body_is_cut(receiver: Receiver) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.5)
        return web.Response(text="late")

    async def chatty(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="\x1b[31mboom\n" + "x" * 5000)

    sender = _sender(allow_private=True, timeout=0.5)
    try:
        receiver.script = slow
        got = await sender.post(receiver.url, b"{}", {}, _now)
        assert (got.status, got.error) == (0, "timed out")
        receiver.script = chatty
        got = await sender.post(receiver.url, b"{}", {}, _now)
    finally:
        await sender.close()
    assert got.status == 500
    assert got.snippet.startswith("[31mboom x")
    assert len(got.snippet) <= 1024
