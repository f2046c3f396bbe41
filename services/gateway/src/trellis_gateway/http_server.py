"""uvicorn as a chassis worker: started and stopped by the service lifecycle, not by itself.

Two things uvicorn leaves open are closed here. Its HTTP/1.1 parser (httptools) takes request
heads of any size, so the protocol below answers 431 once the head outgrows
GATEWAY_MAX_HEADER_BYTES or GATEWAY_MAX_HEADERS, before the app sees the request. And its
X-Forwarded-For handling trusts 127.0.0.1 unless told otherwise: here it trusts exactly
GATEWAY_TRUSTED_PROXIES, so the client address the rate limits see cannot be forged.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Generator, Sequence
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from trellis_gateway.config import Network
from trellis_gateway.problems import problem_json

# How long a refused connection keeps reading (and dropping) what the client still sends, so
# that the client reads our 431 instead of a reset; then it is closed whatever remains.
_LINGER_SECONDS = 2.0


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the parser stops, and the connection is refused."""


def bounded_protocol(max_bytes: int, max_headers: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the request head bounded.

    httptools assembles each header before handing it over, so a single huge header is
    caught by counting the bytes fed while the head is incomplete (at most one read beyond
    the limit is buffered); complete headers are counted and measured as they arrive.
    """

    class Bounded(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0  # fed since the current head began
            self._header_bytes = 0
            self._too_large = False
            self._refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # the rest of a refused request: dropped
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > max_bytes and not self._refused:
                self._refuse()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._header_bytes = 0

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
            if len(self.headers) >= max_headers or self._header_bytes > max_bytes:
                self._too_large = True
                raise _HeadTooLarge
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True

        def send_400_response(self, msg: str) -> None:
            # The parser stops on any callback error; ours means the head was too large.
            if self._too_large:
                self._refuse()
            else:
                super().send_400_response(msg)

        def _refuse(self) -> None:
            self._refused = True
            rid = uuid.uuid4().hex
            body = problem_json(
                431,
                f"the request head is limited to {max_bytes} bytes and {max_headers} headers",
                rid,
            )
            head = (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/problem+json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n"
                b"x-request-id: " + rid.encode() + b"\r\n"
                b"connection: close\r\n\r\n"
            )
            self.transport.write(head + body)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            asyncio.get_running_loop().call_later(_LINGER_SECONDS, self.transport.close)

    return Bounded


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The chassis owns SIGTERM so shutdown runs in its order (DESIGN.md §6).
        yield


class HttpServer:
    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        grace_seconds: float,
        *,
        max_header_bytes: int,
        max_headers: int,
        keep_alive_seconds: int,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=bounded_protocol(max_header_bytes, max_headers),
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(grace_seconds),
            timeout_keep_alive=keep_alive_seconds,
            server_header=False,
            proxy_headers=bool(trusted_proxies),
            forwarded_allow_ips=[str(n) for n in trusted_proxies],
        )
        self._server = _Server(config)

    async def run(self) -> None:
        await self._server.serve()

    async def stop(self) -> None:
        # Stop accepting; uvicorn finishes the requests in flight before serve() returns.
        self._server.should_exit = True
