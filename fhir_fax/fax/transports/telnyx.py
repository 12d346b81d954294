"""Telnyx Programmable Fax v2 over httpx: submit by media URL, webhooks for news, polling to reconcile.

Telnyx fetches the document from a short-lived signed Z3 download URL, echoes our attempt
reference back in ``client_state`` (base64), and reports by webhook (``/fax/webhooks/telnyx``,
verified in ``fax/webhooks.py``). Telnyx has no idempotency key for sends, so after a worker died
mid-submit the takeover lists recent faxes to the same number and matches ``client_state``.

Every value Telnyx sends (by webhook or in a poll) is checked here before it can reach a job or a
Communication. What decides which fax and attempt an event is about (``client_state``, ``fax_id``)
must be well formed or the event is not applied. Details that only describe an otherwise good event
are dropped and logged when malformed: a page count that is not a whole number from 1 to 10,000,
an ``occurred_at`` that is not an ISO 8601 time with a zone (the time of receipt is used), and a
``failure_reason`` that is not a short snake_case word or a SIP code (it becomes UNKNOWN). Refusing
those would make Telnyx resend the same event forever and leave a delivered fax looking unsent.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import httpx

from ...fhir.models import now
from ...settings import Settings
from ...z3.locations import parse_z3_url
from ...z3.signing import presign, signing_key
from ..status import Failure, StatusEvent
from .base import EventSink, Submission, TransportError

QUALITY = {"standard": "normal", "fine": "high", "superfine": "very_high"}
STATUS = {"media.processed": "PROCESSING", "originated": "SENDING", "sending": "SENDING", "delivered": "DELIVERED"}
EVENT_STATUS = {"fax.media.processed": "PROCESSING", "fax.sending.started": "SENDING", "fax.delivered": "DELIVERED"}

# failure_reason -> (our code, message for people, worth retrying)
FAILURES: dict[str, tuple[str, str, bool]] = {
    "user_busy": ("BUSY", "The line was busy.", True),
    "receiver_no_answer": ("NO_ANSWER", "The receiving fax machine did not answer.", True),
    "receiver_call_dropped": ("FAILED", "The call dropped during transmission.", True),
    "fax_initial_communication_timeout": (
        "FAILED", "Fax transmission not established: the number did not answer like a fax machine.", True,
    ),
    "service_unavailable": ("FAILED", "The carrier's service was unavailable.", True),
    "destination_unreachable": ("FAILED", "The destination could not be reached.", True),
    "destination_invalid": ("FAILED", "The destination number is not valid.", False),
    "receiver_unallocated_number": ("FAILED", "The destination number is not assigned.", False),
    "receiver_invalid_number_format": ("FAILED", "The destination number is badly formed.", False),
    "file_download_failed": ("FAILED", "Document generation error: the carrier could not download it.", False),
    "file_format_invalid": ("FAILED", "Document generation error: the carrier could not read it.", False),
}  # fmt: skip


log = logging.getLogger("fhir_fax.telnyx")

# Our attempt reference as echoed in client_state: "{fax id}:{attempt}", the fax id a FHIR-style id.
REFERENCE = re.compile(r"[A-Za-z0-9\-.]{1,64}:[1-9][0-9]{0,5}")
CARRIER_ID = re.compile(r"[A-Za-z0-9\-_.]{1,128}")  # Telnyx fax and event ids are UUIDs
REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
SIP_CODE = re.compile(r"[3-6][0-9]{2}")
MAX_PAGES = 10_000
# Event times are believed within this window around the time of receipt (faxes live for hours, a
# carrier's clock may be a little ahead); outside it the time of receipt is used.
TIME_WINDOW = (timedelta(days=30), timedelta(minutes=5))
NO_REASON = "The carrier reported a failure without a reason."


class CarrierEventProblem(ValueError):
    """A signed event that cannot be applied; the message says which value is wrong."""


def encode_state(reference: str) -> str:
    return base64.b64encode(reference.encode()).decode()


def decode_state(state: object) -> str | None:
    """Our attempt reference from ``client_state``; None when it is not one (another sender's fax, or damaged)."""
    if not isinstance(state, str) or not state or len(state) > 200:
        return None
    try:
        reference = base64.b64decode(state, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return reference if REFERENCE.fullmatch(reference) else None


def carrier_id_of(value: object) -> str:
    """The Telnyx fax id an event is about; an event without a usable one is refused."""
    if not isinstance(value, str) or not CARRIER_ID.fullmatch(value):
        raise CarrierEventProblem("The webhook's payload.fax_id is not a Telnyx fax id; nothing was applied.")
    return value


def failure_of(reason: object) -> Failure:
    """Why the attempt failed, from Telnyx's ``failure_reason``; anything unexpected becomes UNKNOWN."""
    if reason is None or reason == "":
        return Failure("UNKNOWN", NO_REASON, retry=False)
    if isinstance(reason, str) and SIP_CODE.fullmatch(reason):
        return Failure(reason, f"The call failed with SIP {reason}.", retry=reason in ("486", "480", "503"))
    if not isinstance(reason, str) or not REASON.fullmatch(reason):
        log.warning("Telnyx failure_reason %.80r is not a reason code; dropped (UNKNOWN)", reason)
        return Failure("UNKNOWN", NO_REASON, retry=False)
    code, message, retry = FAILURES.get(reason, ("FAILED", f"The fax could not be sent ({reason}).", False))
    return Failure(code, message, retry=retry)


def pages_of(value: object) -> int | None:
    """Telnyx's ``page_count`` when it is a whole number from 1 to MAX_PAGES; otherwise dropped (logged)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PAGES:
        return value
    log.warning("Telnyx page_count %.80r is not a page count; dropped", value)
    return None


def parse_time(text: object) -> datetime:
    """An ISO 8601 time with a zone (``...Z`` or ``+hh:mm``) within TIME_WINDOW of now; else the time of receipt."""
    received = now()
    if text is None or text == "":
        return received
    if isinstance(text, str) and len(text) <= 40 and text.isascii():
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is not None and received - TIME_WINDOW[0] <= moment <= received + TIME_WINDOW[1]:
                return moment
        except (ValueError, OverflowError):  # OverflowError: year 1 with a zone east of UTC
            pass
    log.warning("Telnyx time %.80r is not a recent ISO 8601 time with a zone; the time of receipt is used", text)
    return received


def status_of(state: object, source: str) -> str | None:
    """Our status for a webhook's event type or a polled fax's status; None for news we do not track."""
    if not isinstance(state, str):
        return None
    if state == ("fax.failed" if source == "webhook" else "failed"):
        return "FAILED"
    return (EVENT_STATUS if source == "webhook" else STATUS).get(state)


def make_event(
    reference: str, state: object, occurred: datetime, payload: dict[str, Any], carrier_id: str, source: str
) -> StatusEvent | None:
    """The status event for Telnyx's ``state`` (an event type or a fax status), or None when it is no news."""
    status = status_of(state, source)
    if status is None:
        return None
    if status == "FAILED":
        failure = failure_of(payload.get("failure_reason"))
        return StatusEvent(reference, "FAILED", occurred, failure=failure, source=source, carrier_id=carrier_id)
    pages = pages_of(payload.get("page_count")) if status == "DELIVERED" else None
    return StatusEvent(reference, status, occurred, pages=pages, source=source, carrier_id=carrier_id)


def event_from_webhook(envelope: dict[str, Any]) -> StatusEvent | None:
    """A status event from a Telnyx webhook body, or None when it carries no news for us.

    Raises CarrierEventProblem when the event is about one of our attempts but cannot be matched to one.
    """
    data = envelope.get("data")
    data = data if isinstance(data, dict) else {}
    payload = data.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    reference = decode_state(payload.get("client_state"))
    if reference is None or status_of(data.get("event_type"), "webhook") is None:
        return None
    carrier_id = carrier_id_of(payload.get("fax_id"))
    occurred = parse_time(data.get("occurred_at"))
    return make_event(reference, data.get("event_type"), occurred, payload, carrier_id, "webhook")


class Telnyx:
    name = "telnyx"

    def __init__(self, settings: Settings, database: Any) -> None:
        if not (settings.telnyx_api_key and settings.telnyx_connection_id and settings.base_url):
            raise ValueError(
                "The telnyx carrier needs FHIR_FAX_TELNYX_API_KEY, FHIR_FAX_TELNYX_CONNECTION_ID and FHIR_FAX_BASE_URL "
                "(the public address Telnyx fetches documents from and sends webhooks to)."
            )
        self.settings = settings
        self.database = database
        self.client = httpx.AsyncClient(
            base_url=settings.telnyx_api_base.rstrip("/"),
            headers={"authorization": f"Bearer {settings.telnyx_api_key}"},
            timeout=settings.telnyx_timeout_seconds,
        )

    async def start(self, sink: EventSink) -> None:
        """News arrives by webhook (fax/webhooks.py), so there is nothing to start."""

    async def stop(self) -> None:
        await self.client.aclose()

    async def media_url(self, media: str, version: str | None = None) -> str:
        """A signed download URL of the pinned version (what was checked at send), not of whatever the key holds."""
        base = (self.settings.base_url or "").rstrip("/") + self.settings.project_api_path
        key = await signing_key(self.database)
        ttl = self.settings.z3_url_ttl_seconds
        return presign(key, base, parse_z3_url(media, ()), "download", ttl, version=version)

    async def submit(self, submission: Submission) -> str:
        body = {
            "connection_id": self.settings.telnyx_connection_id,
            "to": submission.to_number,
            "from": submission.from_number,
            "media_url": await self.media_url(submission.media, submission.media_version),
            "quality": QUALITY[submission.quality],
            "client_state": encode_state(submission.reference),
            "webhook_url": f"{(self.settings.base_url or '').rstrip('/')}/fax/webhooks/telnyx",
            "store_media": False,
        }
        response = await self._request("POST", "/faxes", json=body)
        if response.status_code in (200, 201, 202):
            return response.json()["data"]["id"]
        detail = _error_detail(response)
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise TransportError("CARRIER_UNAVAILABLE", f"Telnyx is unavailable ({response.status_code}): {detail}")
        raise TransportError("FAILED", f"Telnyx refused the fax ({response.status_code}): {detail}")

    async def find(self, reference: str, to_number: str, since: datetime) -> str | None:
        state = encode_state(reference)
        for page in range(1, 11):
            params = {
                "filter[to][eq]": to_number,
                "filter[direction][eq]": "outbound",
                "filter[created_at][gte]": (since - timedelta(minutes=1)).isoformat(),
                "page[size]": "50",
                "page[number]": str(page),
            }
            response = await self._request("GET", "/faxes", params=params)
            if response.status_code != 200:
                raise TransportError("CARRIER_UNAVAILABLE", f"Telnyx could not list faxes ({response.status_code}).")
            faxes = response.json().get("data", [])
            for fax in faxes:
                if fax.get("client_state") == state:
                    return fax["id"]
            if len(faxes) < 50:
                return None
        return None

    async def poll(self, carrier_id: str) -> list[StatusEvent]:
        response = await self._request("GET", f"/faxes/{carrier_id}")
        if response.status_code != 200:
            return []
        try:
            fax = response.json()["data"]
        except (ValueError, KeyError, TypeError):
            return []
        reference = decode_state(fax.get("client_state")) if isinstance(fax, dict) else None
        if reference is None:
            return []
        event = make_event(reference, fax.get("status"), parse_time(fax.get("updated_at")), fax, carrier_id, "poll")
        return [] if event is None else [event]

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise TransportError(
                "CARRIER_UNAVAILABLE", f"Telnyx could not be reached ({type(error).__name__})."
            ) from None


def _error_detail(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return "; ".join(e.get("detail") or e.get("title") or "" for e in errors) or response.text[:200]
    except ValueError:
        return response.text[:200]
