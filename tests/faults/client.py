"""The client side of the fault run: logical writes retried until answered, and their record.

A logical write is one thing a caller wants done once (a create, a stage move). Its client
sends it again, with the same Idempotency-Key and body, on every answer that says "not now"
(a transport error, 409, 429, any 5xx) until it succeeds or its deadline passes, as the issue's
outside run did. Every attempt's answer is kept, so the run can show no 500 anywhere, and the
final answer is what the caller was told: the record the database and the stream are checked
against.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

# Answers after which a caller may try again. 409 is the gateway's "a request with this key is
# still running" (or a conflict with a concurrent change): both pass.
RETRYABLE = frozenset({409, 429})
FIRST_BACKOFF, MAX_BACKOFF = 0.1, 1.0
MAX_RETRY_AFTER = 5.0


@dataclass
class Write:
    kind: str
    label: str  # unique per logical write; how its record is found in the database
    method: str
    path: str
    body: dict[str, Any]
    key: str | None = None  # the Idempotency-Key of a POST
    statuses: list[int | str] = field(default_factory=list)  # each attempt: status or error
    answer: dict[str, Any] | None = None  # the body of the success the caller got

    @property
    def acknowledged(self) -> bool:
        return self.answer is not None


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    return min(float(value), MAX_RETRY_AFTER) if value.isdigit() else 0.0


class Client:
    """Sends writes with one tenant's API key, keeping count of the problems answered."""

    def __init__(self, base_url: str, api_key: str, deadline: float) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            # Longer than the gateway's backend deadline, so a slow answer is its answer.
            timeout=20,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self.deadline = deadline
        self.problems: Counter[str] = Counter()  # "<status> <detail>" of every problem answer

    async def close(self) -> None:
        await self.http.aclose()

    async def attempt(self, write: Write) -> httpx.Response | None:
        """One attempt, its answer recorded; None when no answer came (a transport error)."""
        headers = {"Idempotency-Key": write.key} if write.key else {}
        try:
            response = await self.http.request(
                write.method, write.path, json=write.body, headers=headers
            )
        except httpx.TransportError as exc:
            write.statuses.append(type(exc).__name__)
            return None
        write.statuses.append(response.status_code)
        if response.headers.get("content-type") == "application/problem+json":
            self.problems[f"{response.status_code} {response.json()['detail']}"] += 1
        return response

    async def send(self, write: Write, *, patient: bool = True) -> None:
        """Until the write succeeds or its deadline passes. A patient caller also waits what
        Retry-After asks; the fault driver's probes are not patient, because they measure how
        soon the platform serves again."""
        started = time.monotonic()
        backoff = FIRST_BACKOFF
        while True:
            response = await self.attempt(write)
            wait = backoff
            if response is not None:
                if response.is_success:
                    write.answer = response.json()
                    return
                if response.status_code < 500 and response.status_code not in RETRYABLE:
                    return  # refused for good: the caller has its answer
                if patient:
                    wait = max(wait, _retry_after(response))
            if time.monotonic() - started + wait > self.deadline:
                return
            await asyncio.sleep(wait * random.uniform(0.5, 1.0))
            backoff = min(MAX_BACKOFF, backoff * 2)


class Pacer:
    """Starts logical writes at a steady rate shared by every worker, as the issue's run did
    (60/s): a worker held up by a fault does not make the others burst to catch up."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        await asyncio.sleep(slot - now)
