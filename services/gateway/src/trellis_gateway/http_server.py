"""uvicorn as a chassis worker: started and stopped by the service lifecycle, not by itself."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The chassis owns SIGTERM so shutdown runs in its order (DESIGN.md §6).
        yield


class HttpServer:
    def __init__(self, app: ASGIApp, host: str, port: int, grace_seconds: float) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(grace_seconds),
            server_header=False,
        )
        self._server = _Server(config)

    async def run(self) -> None:
        await self._server.serve()

    async def stop(self) -> None:
        # Stop accepting; uvicorn finishes the requests in flight before serve() returns.
        self._server.should_exit = True
