"""Telnyx's news, checked and read: a webhook body or a polled fax becomes a ``StatusEvent`` (or nothing).

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

from ....fhir.models import now
from ...jobs import Reported
from ...status import Failure, StatusEvent
from ..base import WebhookUnreadable

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


class CarrierEventProblem(WebhookUnreadable):
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
    if isinstance(reason, str) and SIP_CODE.fullmatch(reason):  # the retry policy knows which SIP codes are transient
        return Failure(reason, f"The call failed with SIP {reason}.")
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


def status_of(state: object, source: str) -> Reported | None:
    """Our status for a webhook's event type or a polled fax's status; None for news we do not track."""
    if not isinstance(state, str):
        return None
    if state == ("fax.failed" if source == "webhook" else "failed"):
        return Reported.FAILED
    found = (EVENT_STATUS if source == "webhook" else STATUS).get(state)
    return None if found is None else Reported(found)


def make_event(
    reference: str, state: object, occurred: datetime, payload: dict[str, Any], carrier_id: str, source: str
) -> StatusEvent | None:
    """The status event for Telnyx's ``state`` (an event type or a fax status), or None when it is no news."""
    status = status_of(state, source)
    if status is None:
        return None
    if status is Reported.FAILED:
        failure = failure_of(payload.get("failure_reason"))
        return StatusEvent(reference, Reported.FAILED, occurred, failure=failure, source=source, carrier_id=carrier_id)
    pages = pages_of(payload.get("page_count")) if status is Reported.DELIVERED else None
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
