"""Standard Webhooks signatures: the secrets, and the headers of one attempt.

The signature is HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>" with the
endpoint's secret, made by the `standardwebhooks` package, the one partners verify with.
During a rotation the previous secret signs too: `webhook-signature` then carries both
signatures, space-separated, and a receiver holding either secret accepts the message.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime
from math import floor

from standardwebhooks.webhooks import Webhook

_PREFIX = "whsec_"
_SECRET_BYTES = 32


def new_secret() -> str:
    return _PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def headers(
    message_id: str, at: datetime, body: bytes, signing_secrets: Sequence[str]
) -> dict[str, str]:
    """The webhook-* headers of one attempt at `at` (a new timestamp, so a new signature,
    on every attempt; the id stays the event's)."""
    text = body.decode()
    signatures = " ".join(Webhook(s).sign(message_id, at, text) for s in signing_secrets)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(floor(at.timestamp())),
        "webhook-signature": signatures,
    }
