"""The mailer: sends queued emails over SMTP (aiosmtplib), one connection per email.

Each email is checked again just before it is sent (an unsubscribe or a withdrawn consent
since it was queued stops it). A refusal of the recipient for good (5xx) is a bounce: the
email is marked bounced and the address suppressed for every purpose; anything temporary
(4xx, a connection failure, a timeout) is retried on the mail schedule, then the email fails.
Every email carries the RFC 8058 one-click unsubscribe headers and a Message-ID made from its
id, so a receiver can tell a retry from a second email.
"""

from __future__ import annotations

import email.policy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import aiosmtplib

from crmkit import db
from crmkit.clock import Clock, system_clock
from trellis_notify import mail_store
from trellis_notify.domain import RetryPolicy
from trellis_notify.mail_store import Claim, Outgoing
from trellis_notify.metrics import EMAILS
from trellis_notify.queue import QueueWorker
from trellis_notify.unsubscribe import ONE_CLICK, Links

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: str  # none, starttls, tls
    timeout: float
    sender: str  # the From header
    message_id_domain: str


# SMTP's line length (RFC 5322: 998): the default policy would fold a long header at 78 and
# write an unsubscribe URL as an encoded word, which RFC 2369 headers must not be.
_POLICY = email.policy.SMTP.clone(max_line_length=998)


def message(email: Outgoing, smtp: Smtp, unsubscribe_url: str) -> EmailMessage:
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = smtp.sender
    msg["To"] = email.to
    msg["Subject"] = email.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{email.claim.id}@{smtp.message_id_domain}>"
    msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = ONE_CLICK
    if email.text:
        msg.set_content(email.text)
        if email.html:
            msg.add_alternative(email.html, subtype="html")
    else:
        msg.set_content(email.html, subtype="html")
    return msg


class Mailer(QueueWorker[Claim]):
    def __init__(
        self,
        pool: db.Pool,
        smtp: Smtp,
        links: Links,
        policy: RetryPolicy,
        *,
        clock: Clock = system_clock,
        concurrency: int = 8,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__(pool, "emails", concurrency=concurrency, poll_interval=poll_interval)
        self._smtp = smtp
        self._links = links
        self._policy = policy
        self._clock = clock
        self._lease = timedelta(seconds=smtp.timeout * 2 + 60)

    async def claim(self, free: int) -> Sequence[Claim]:
        return await mail_store.claim(self._pool, self._clock(), self._lease, free)

    async def work(self, item: Claim) -> None:
        found = await mail_store.claimed(self._pool, item)
        if found is None:
            return
        email, refused = found
        if refused:
            await self._record(item, "suppressed", refused, email.attempts)
            return
        attempts = email.attempts + 1
        smtp = self._smtp
        try:
            # Flattened here, with our policy: aiosmtplib's own would fold the headers at 78.
            await aiosmtplib.send(
                message(email, smtp, self._links.url(item.tenant_id, item.id)).as_bytes(),
                sender=parseaddr(smtp.sender)[1],
                recipients=[email.to],
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.username,
                password=smtp.password,
                use_tls=smtp.tls == "tls",
                start_tls=smtp.tls == "starttls",
                timeout=smtp.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as err:
            codes = [r.code for r in err.recipients]
            why = "; ".join(f"{r.code} {r.message}" for r in err.recipients)
            if all(code >= 500 for code in codes):
                await self._record(item, "bounced", why, attempts, bounce=email)
            else:
                await self._retry(item, why, attempts)
        except aiosmtplib.SMTPResponseException as err:
            why = f"{err.code} {err.message}"
            if err.code >= 500:
                await self._record(item, "failed", why, attempts)
            else:
                await self._retry(item, why, attempts)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            await self._retry(item, type(err).__name__, attempts)
        else:
            await self._record(item, "sent", "", attempts)

    async def _retry(self, item: Claim, why: str, attempts: int) -> None:
        delay = self._policy.delay(attempts, None)
        if delay is None:
            await self._record(item, "failed", why, attempts)
        else:
            await self._record(
                item, "queued", why, attempts, self._clock() + timedelta(seconds=delay)
            )

    async def _record(
        self,
        item: Claim,
        status: str,
        error: str,
        attempts: int,
        next_attempt_at: datetime | None = None,
        bounce: Outgoing | None = None,
    ) -> None:
        recorded = await mail_store.record(
            self._pool,
            item,
            status=status,
            error=error,
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            at=self._clock(),
            bounce=bounce,
        )
        if recorded:
            EMAILS.labels("retried" if status == "queued" else status).inc()
