"""Carrier webhooks: ``POST /fax/webhooks/{carrier}``, verified by that carrier before anything else is done.

The route is the same for every carrier; what differs (the signature, the body) is the registered carrier's
``WebhookReader`` (Telnyx: ``transports/telnyx/webhooks.py``). An unverified event (unsigned, tampered,
stale) is refused with 401; a body that is not the carrier's event, or an event whose deciding values are
wrong, with 400. An event already received (same event id: a duplicate delivery or a replay) is answered 200
and not applied again; applying is idempotent anyway.

A signature only says the carrier sent the event. It is applied only when it is about an attempt this
server handed to that carrier: the event names the fax and attempt, and the carrier's id for the fax must be
the one recorded for that attempt when the carrier accepted it. Otherwise it is refused with 409 and logged,
and nothing is applied or recorded, so a retry by the carrier is applied once the hand-over is recorded (a
webhook can overtake the worker's record of the submission).

An inbound event (a fax received at one of our numbers: the reader's ``inbound``) goes to the reception
(``inbound.Reception``) instead: a number not onboarded is 422, media that cannot be fetched safely (off the
allowed hosts, a redirect, too big) is 422, a media host failing for now is 503 (the carrier retries), and the
same carrier fax announced again, under any event id or at the same moment, is one Communication.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from fastapi import APIRouter, Request
from pymongo.errors import DuplicateKeyError

from ..errors import Unavailable, Unprocessable
from ..fhir.errors import Conflict, InvalidRequest, ResourceNotFound, Unauthorized
from ..fhir.models import now
from ..sdk_http import SDKRoute
from .outbox import Outbox
from .status import StatusEvent
from .transports.base import (
    WEBHOOK_PREFIX,
    Carrier,
    InboundNotice,
    MediaRefused,
    WebhookReader,
    WebhookRefused,
    WebhookUnreadable,
)
from .transports.registry import carrier_named

RECEIPTS = "webhook_receipts"
log = logging.getLogger("fhir_fax.webhooks")


async def unmatched_attempt(outbox: Outbox, event: StatusEvent, carrier: str) -> str | None:
    """None when ``event`` is about an attempt handed to the carrier under its ``carrier_id``, else why not."""
    job = await outbox.get(event.fax_id)
    if job is None:
        return f"The event is about fax {event.fax_id}, which this server never sent; nothing was applied."
    recorded = job.carrier_id(event.attempt)
    if recorded is None:
        return (
            f"The event is about attempt {event.attempt} of fax {event.fax_id}, which was never handed to {carrier} "
            "(or its hand-over is not recorded yet); nothing was applied."
        )
    if recorded != event.carrier_id:
        return (
            f"The event is about {carrier} fax {event.carrier_id}, but attempt {event.attempt} of fax {event.fax_id} "
            f"is {carrier} fax {recorded}; nothing was applied."
        )
    return None


def _reader(name: str, settings: Any) -> tuple[Carrier, WebhookReader]:
    """The registered carrier ``name`` and its webhook reader; 404 when no such carrier sends webhooks."""
    carrier = carrier_named(name)
    if carrier is None or carrier.webhooks is None:
        raise ResourceNotFound(f"No carrier named {name!r} sends webhooks here; check the webhook URL.")
    return carrier, carrier.webhooks(settings)


def webhook_router(fax: Any) -> APIRouter:
    """``fax`` is the FaxAPI: its service and tracker are set while the module runs."""
    limit = fax.settings.webhook_max_body_bytes  # read before the signature is checked: kept small
    router = APIRouter(prefix=WEBHOOK_PREFIX, route_class=SDKRoute.limited(limit), tags=["Carrier webhooks"])

    @router.post("/{carrier}", summary="Carrier webhooks (Telnyx: Ed25519-signed), verified by the named carrier")
    async def webhook(carrier: str, request: Request) -> dict[str, str]:
        raw = await request.body()
        registered, reader = _reader(carrier, fax.settings)
        try:
            verified = reader.verify(raw, request.headers)
        except WebhookRefused as problem:
            raise Unauthorized(str(problem)) from None
        except WebhookUnreadable as problem:
            raise InvalidRequest(str(problem)) from None
        service, tracker = fax.require_service(), fax.tracker
        receipts = service.database[RECEIPTS]
        receipt_id = f"{registered.name}:{verified.event_id}"
        if await receipts.find_one({"_id": receipt_id}) is not None:
            return {"status": "duplicate"}
        inbound = getattr(reader, "inbound", None)
        try:
            notice = inbound(verified) if inbound is not None else None
        except WebhookUnreadable as problem:
            log.warning("%s event %s refused: %s", registered.title, verified.event_id, problem)
            raise InvalidRequest(str(problem)) from None
        if notice is not None:
            outcome = await receive(fax, registered, reader, notice)
            with contextlib.suppress(DuplicateKeyError):  # a simultaneous delivery of it may have recorded it first
                await receipts.insert_one({"_id": receipt_id, "received": now()})
            return {"status": outcome}
        try:
            event = reader.event(verified)
        except WebhookUnreadable as problem:
            log.warning("%s event %s refused: %s", registered.title, verified.event_id, problem)
            raise InvalidRequest(str(problem)) from None
        if event is not None:
            unmatched = await unmatched_attempt(tracker.outbox, event, registered.title)
            if unmatched is not None:
                log.warning(
                    "%s event %s refused: %s", registered.title, verified.event_id, unmatched,
                    extra={"fax": event.fax_id},
                )  # fmt: skip
                raise Conflict(unmatched)
        applied = await tracker.apply(event) if event is not None else False
        try:
            await receipts.insert_one({"_id": receipt_id, "received": now()})
        except DuplicateKeyError:
            return {"status": "duplicate"}
        return {"status": "applied" if applied else "ignored"}

    return router


async def receive(fax: Any, carrier: Carrier, reader: Any, notice: InboundNotice) -> str:
    """Hand a received fax to the reception; ``received``, or ``duplicate`` when this carrier fax is already in."""
    reception = fax.runtime().reception
    await reception.check_number(notice, carrier.title)  # before anything is fetched
    if await reception.earlier(carrier.name, notice) is not None:
        return "duplicate"
    media = None
    if notice.failure is None:
        try:
            media = await reader.fetch_media(notice)
        except MediaRefused as problem:
            log.warning("%s fax %s refused: %s", carrier.title, notice.carrier_fax_id, problem)
            if problem.transient:
                raise Unavailable(str(problem)) from None
            raise Unprocessable(str(problem), expression=["media_url"]) from None
    received = await reception.receive(carrier.name, notice, media, who=f"{carrier.title} webhook", suggest_later=True)
    return "duplicate" if received.duplicate else "received"
