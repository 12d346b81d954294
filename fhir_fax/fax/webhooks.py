"""Carrier webhooks: ``POST /fax/webhooks/telnyx``, verified before anything else is done with them.

The Ed25519 signature covers ``"{telnyx-timestamp}|{raw body}"``, so it is checked on the raw bytes
before the body is parsed. Unsigned, tampered and stale (more than ``FHIR_FAX_WEBHOOK_TOLERANCE_SECONDS``
off) events are refused with 401. An event already received (same event id: a duplicate delivery or a
replay) is answered 200 and not applied again; applying is idempotent anyway.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Request
from pymongo.errors import DuplicateKeyError

from ..fhir.errors import InvalidRequest, Unauthorized
from ..fhir.models import now
from ..sdk_http import SDKRoute
from .transports.telnyx import event_from_webhook

RECEIPTS = "webhook_receipts"


def telnyx_signature_problem(
    public_key: str | None, raw: bytes, signature: str | None, timestamp: str | None, tolerance: int
) -> str | None:
    """None when the webhook is signed by Telnyx's key, recently; else why it is refused."""
    if not public_key:
        return "Telnyx webhooks are not accepted: FHIR_FAX_TELNYX_PUBLIC_KEY is not configured."
    if not signature or not timestamp:
        return "The webhook is not signed (telnyx-signature-ed25519 and telnyx-timestamp are required)."
    if not timestamp.isdigit():
        return "The webhook's telnyx-timestamp is not a Unix time."
    if abs(time.time() - int(timestamp)) > tolerance:
        return "The webhook's timestamp is too old or in the future; it may be a replay."
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + raw)
    except (InvalidSignature, binascii.Error, ValueError):
        return "The webhook's signature does not match its body."
    return None


def webhook_router(fax: Any) -> APIRouter:
    """``fax`` is the FaxAPI: its service and tracker are set while the module runs."""
    limit = fax.fhir.settings.webhook_max_body_bytes  # read before the signature is checked: kept small
    router = APIRouter(route_class=SDKRoute.limited(limit), tags=["Carrier webhooks"])

    @router.post("/telnyx", summary="Telnyx fax webhooks (Ed25519-signed)")
    async def telnyx(request: Request) -> dict[str, str]:
        raw = await request.body()
        settings = fax.fhir.settings
        problem = telnyx_signature_problem(
            settings.telnyx_public_key,
            raw,
            request.headers.get("telnyx-signature-ed25519"),
            request.headers.get("telnyx-timestamp"),
            settings.webhook_tolerance_seconds,
        )
        if problem:
            raise Unauthorized(problem)
        try:
            envelope = json.loads(raw)
            event_id = envelope["data"]["id"]
        except (ValueError, KeyError, TypeError):
            raise InvalidRequest("The webhook body is not a Telnyx event envelope.") from None
        service, tracker = fax.require_service(), fax.tracker
        receipts = service.database[RECEIPTS]
        receipt_id = f"telnyx:{event_id}"
        if await receipts.find_one({"_id": receipt_id}) is not None:
            return {"status": "duplicate"}
        event = event_from_webhook(envelope)
        applied = await tracker.apply(event) if event is not None else False
        try:
            await receipts.insert_one({"_id": receipt_id, "received": now()})
        except DuplicateKeyError:
            return {"status": "duplicate"}
        return {"status": "applied" if applied else "ignored"}

    return router
