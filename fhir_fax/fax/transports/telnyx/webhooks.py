"""Telnyx webhooks, verified before anything else is done with them, then read (``events.py``).

The Ed25519 signature covers ``"{telnyx-timestamp}|{raw body}"``, so it is checked on the raw bytes
before the body is parsed. Unsigned, tampered and stale (more than ``FHIR_FAX_WEBHOOK_TOLERANCE_SECONDS``
off) events are refused. The generic route (``fax/webhooks.py``) does what is the same for every carrier:
duplicates, matching the event to the recorded attempt, applying it.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ....fhir.inputs import ascii_int
from ....settings import Settings
from ...status import StatusEvent
from ..base import VerifiedWebhook, WebhookRefused, WebhookUnreadable
from .events import CARRIER_ID, event_from_webhook
from .inbound import TelnyxInbound


def telnyx_signature_problem(
    public_key: str | None, raw: bytes, signature: str | None, timestamp: str | None, tolerance: int
) -> str | None:
    """None when the webhook is signed by Telnyx's key, recently; else why it is refused."""
    if not public_key:
        return "Telnyx webhooks are not accepted: FHIR_FAX_TELNYX_PUBLIC_KEY is not configured."
    if not signature or not timestamp:
        return "The webhook is not signed (telnyx-signature-ed25519 and telnyx-timestamp are required)."
    sent_at = ascii_int(timestamp)
    if sent_at is None:
        return "The webhook's telnyx-timestamp is not a Unix time."
    if abs(time.time() - sent_at) > tolerance:
        return "The webhook's timestamp is too old or in the future; it may be a replay."
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + raw)
    except (InvalidSignature, binascii.Error, ValueError):
        return "The webhook's signature does not match its body."
    return None


class TelnyxWebhooks(TelnyxInbound):
    """The ``WebhookReader`` of Telnyx: needs only the public key and the tolerance, not the API credentials.

    Its inbound half (``inbound.py``) reads ``fax.received`` and fetches the media from the allowed hosts.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.public_key = settings.telnyx_public_key
        self.tolerance = settings.webhook_tolerance_seconds

    def verify(self, raw: bytes, headers: Mapping[str, str]) -> VerifiedWebhook:
        problem = telnyx_signature_problem(
            self.public_key,
            raw,
            headers.get("telnyx-signature-ed25519"),
            headers.get("telnyx-timestamp"),
            self.tolerance,
        )
        if problem:
            raise WebhookRefused(problem)
        try:
            envelope = json.loads(raw)
            event_id = envelope["data"]["id"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise WebhookUnreadable("The webhook body is not a Telnyx event envelope.") from None
        if not isinstance(event_id, str) or not CARRIER_ID.fullmatch(event_id):
            raise WebhookUnreadable("The webhook's data.id is not a Telnyx event id; nothing was applied.")
        return VerifiedWebhook(event_id, envelope)

    def event(self, webhook: VerifiedWebhook) -> StatusEvent | None:
        return event_from_webhook(webhook.body)
