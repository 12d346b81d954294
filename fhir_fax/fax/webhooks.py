"""Carrier webhooks: ``POST /fax/webhooks/telnyx``, verified before anything else is done with them.

The Ed25519 signature covers ``"{telnyx-timestamp}|{raw body}"``, so it is checked on the raw bytes
before the body is parsed. Unsigned, tampered and stale (more than ``FHIR_FAX_WEBHOOK_TOLERANCE_SECONDS``
off) events are refused with 401. An event already received (same event id: a duplicate delivery or a
replay) is answered 200 and not applied again; applying is idempotent anyway.

A signature only says Telnyx sent the event. It is applied only when it is about an attempt this
server handed to Telnyx: its ``client_state`` names the fax and attempt, and its ``fax_id`` must be the
Telnyx fax id recorded for that attempt when Telnyx accepted it. Otherwise it is refused with 409 and
logged, and nothing is applied or recorded, so a retry by Telnyx is applied once the hand-over is
recorded (a webhook can overtake the worker's record of the submission). Values are checked in
``transports/telnyx.py``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Request
from pymongo.errors import DuplicateKeyError

from ..fhir.errors import Conflict, InvalidRequest, Unauthorized
from ..fhir.inputs import ascii_int
from ..fhir.models import now
from ..sdk_http import SDKRoute
from .outbox import Outbox
from .status import StatusEvent
from .transports.telnyx import CARRIER_ID, CarrierEventProblem, event_from_webhook

RECEIPTS = "webhook_receipts"
log = logging.getLogger("fhir_fax.webhooks")


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


async def unmatched_attempt(outbox: Outbox, event: StatusEvent) -> str | None:
    """None when ``event`` is about an attempt handed to the carrier under its ``carrier_id``, else why not."""
    job = await outbox.get(event.fax_id)
    if job is None:
        return f"The event is about fax {event.fax_id}, which this server never sent; nothing was applied."
    recorded = (job.get("carrier_ids") or {}).get(str(event.attempt))
    if recorded is None:
        return (
            f"The event is about attempt {event.attempt} of fax {event.fax_id}, which was never handed to Telnyx "
            "(or its hand-over is not recorded yet); nothing was applied."
        )
    if recorded != event.carrier_id:
        return (
            f"The event is about Telnyx fax {event.carrier_id}, but attempt {event.attempt} of fax {event.fax_id} "
            f"is Telnyx fax {recorded}; nothing was applied."
        )
    return None


def webhook_router(fax: Any) -> APIRouter:
    """``fax`` is the FaxAPI: its service and tracker are set while the module runs."""
    limit = fax.settings.webhook_max_body_bytes  # read before the signature is checked: kept small
    router = APIRouter(route_class=SDKRoute.limited(limit), tags=["Carrier webhooks"])

    @router.post("/telnyx", summary="Telnyx fax webhooks (Ed25519-signed)")
    async def telnyx(request: Request) -> dict[str, str]:
        raw = await request.body()
        settings = fax.settings
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
        except (ValueError, KeyError, TypeError, RecursionError):
            raise InvalidRequest("The webhook body is not a Telnyx event envelope.") from None
        if not isinstance(event_id, str) or not CARRIER_ID.fullmatch(event_id):
            raise InvalidRequest("The webhook's data.id is not a Telnyx event id; nothing was applied.")
        service, tracker = fax.require_service(), fax.tracker
        receipts = service.database[RECEIPTS]
        receipt_id = f"telnyx:{event_id}"
        if await receipts.find_one({"_id": receipt_id}) is not None:
            return {"status": "duplicate"}
        try:
            event = event_from_webhook(envelope)
        except CarrierEventProblem as problem:
            log.warning("Telnyx event %s refused: %s", event_id, problem)
            raise InvalidRequest(str(problem)) from None
        if event is not None:
            unmatched = await unmatched_attempt(tracker.outbox, event)
            if unmatched is not None:
                log.warning("Telnyx event %s refused: %s", event_id, unmatched, extra={"fax": event.fax_id})
                raise Conflict(unmatched)
        applied = await tracker.apply(event) if event is not None else False
        try:
            await receipts.insert_one({"_id": receipt_id, "received": now()})
        except DuplicateKeyError:
            return {"status": "duplicate"}
        return {"status": "applied" if applied else "ignored"}

    return router
