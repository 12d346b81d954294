"""Telnyx Programmable Fax v2 over httpx: submit by media URL, webhooks for news, polling to reconcile.

Telnyx fetches the document from a short-lived signed Z3 download URL, echoes our attempt
reference back in ``client_state`` (base64), and reports by webhook (``/fax/webhooks/telnyx``,
verified in ``fax/webhooks.py``). Telnyx has no idempotency key for sends, so after a worker died
mid-submit the takeover lists recent faxes to the same number and matches ``client_state``.
"""

from __future__ import annotations

import base64
import binascii
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


def encode_state(reference: str) -> str:
    return base64.b64encode(reference.encode()).decode()


def decode_state(state: str | None) -> str | None:
    if not state:
        return None
    try:
        return base64.b64decode(state, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def failure_of(reason: str | None) -> Failure:
    if not reason:
        return Failure("UNKNOWN", "The carrier reported a failure without a reason.", retry=False)
    if reason.isdigit():  # a SIP response code
        return Failure(reason, f"The call failed with SIP {reason}.", retry=reason in ("486", "480", "503"))
    code, message, retry = FAILURES.get(reason, ("FAILED", f"The fax could not be sent ({reason}).", False))
    return Failure(code, message, retry=retry)


def parse_time(text: str | None) -> datetime:
    if not text:
        return now()
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def event_from_webhook(envelope: dict[str, Any]) -> StatusEvent | None:
    """A status event from a Telnyx webhook body, or None when it carries no news for us."""
    data = envelope.get("data") or {}
    payload = data.get("payload") or {}
    reference = decode_state(payload.get("client_state"))
    event_type = data.get("event_type")
    if reference is None or ":" not in reference:
        return None
    occurred = parse_time(data.get("occurred_at"))
    if event_type == "fax.failed":
        return StatusEvent(
            reference, "FAILED", occurred, failure=failure_of(payload.get("failure_reason")), source="webhook"
        )
    status = EVENT_STATUS.get(event_type or "")
    if status is None:
        return None
    pages = payload.get("page_count") if status == "DELIVERED" else None
    return StatusEvent(reference, status, occurred, pages=pages, source="webhook")


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
        fax = response.json()["data"]
        reference = decode_state(fax.get("client_state"))
        if reference is None:
            return []
        occurred = parse_time(fax.get("updated_at"))
        if fax.get("status") == "failed":
            return [
                StatusEvent(reference, "FAILED", occurred, failure=failure_of(fax.get("failure_reason")), source="poll")
            ]
        status = STATUS.get(fax.get("status", ""))
        if status is None:
            return []
        pages = fax.get("page_count") if status == "DELIVERED" else None
        return [StatusEvent(reference, status, occurred, pages=pages, source="poll")]

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
