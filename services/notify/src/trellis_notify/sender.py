"""One POST of a webhook, and what came back.

One aiohttp session for every endpoint: connections are reused per host, and the resolver
refuses what webhooks may not reach (trellis_notify.ssrf). Redirects are never followed, no
proxy is taken from the environment, and each attempt is bounded by the timeout whatever the
endpoint does (a slow body included).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime

import aiohttp
from aiohttp.abc import AbstractResolver

from crmkit.text import one_line
from trellis_notify import cloudevent, ssrf
from trellis_notify.domain import Answer, retry_after_seconds

SNIPPET_BYTES = 1024
USER_AGENT = "Trellis-Webhooks/1"


def _snippet(raw: bytes) -> str:
    # Printable and one line: it is shown in the delivery log and may be anything.
    text = raw.decode("utf-8", errors="replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


class Sender:
    def __init__(
        self,
        *,
        allow_private: bool,
        timeout: float,
        concurrency: int,
        per_endpoint: int,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._allow_private = allow_private
        self._timeout = timeout
        self._concurrency = concurrency
        self._per_endpoint = per_endpoint
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=ssrf.GuardedResolver(self._allow_private, self._resolver),
                limit=self._concurrency,
                limit_per_host=self._per_endpoint,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                trust_env=False,
                auto_decompress=False,
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        now: Callable[[], datetime],
    ) -> Answer:
        """POST `body`; never raises for anything the endpoint or the network does."""
        try:
            ssrf.check_url(url, self._allow_private)
        except ssrf.AddressRefusedError as err:
            return Answer(error=f"address refused: {err}")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                async with self._open().post(
                    url,
                    data=body,
                    headers={**headers, "Content-Type": cloudevent.CONTENT_TYPE},
                    allow_redirects=False,
                ) as response:
                    latency = int((time.perf_counter() - started) * 1000)
                    raw = await response.content.read(SNIPPET_BYTES)
                    status = response.status
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"), now())
        except TimeoutError:
            return Answer(error="timed out", latency_ms=int((time.perf_counter() - started) * 1000))
        except (aiohttp.ClientError, OSError, ssrf.AddressRefusedError) as err:
            return Answer(
                error=one_line(ssrf.describe(err), "", []),
                latency_ms=int((time.perf_counter() - started) * 1000),
            )
        error = ""
        if 300 <= status < 400:
            error = "redirects are not followed"
        elif not 200 <= status < 300:
            error = f"HTTP {status}"
        return Answer(
            status=status,
            error=error,
            retry_after=retry_after,
            latency_ms=latency,
            snippet=_snippet(raw),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
