"""What a received fax looks like in FHIR: its Communication (the shape Ottehr reads) and its triage Task.

Sender: a contained Device holding the caller's number (identifier system ``phone``; Ottehr's
``getSenderFaxNumber`` prefers it). Recipient: the owner of the called number, else a contained Device for the
line. Pages: ``Communication.extension`` fax-pages, on the Communication itself. Direction: the
inbound-fax-status extension (never the outbound one) and the inbound category. Document:
``payload[0].contentAttachment`` (the PDF), ``payload[1]`` the carrier's original when it was not that PDF.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..fhir.models import format_instant, now
from .inbound_document import PDF, AcceptedDocument
from .phone import E164
from .status import Failure
from .terminology import (
    CALLER_NUMBER_SYSTEM,
    FAILURE_REASON_SYSTEM,
    FAX_IDENTIFIER_SYSTEM,
    TASK_CODE_SYSTEM,
    TRIAGE_CODE,
    fax_identifier,
    fax_medium,
    inbound_category,
    inbound_status_extension,
    pages_extension,
)
from .transports.base import InboundNotice

SENDER_ID, RECIPIENT_ID = "caller", "called"  # ids of the contained Devices
HIDDEN = "a hidden number"


@dataclass(frozen=True)
class Documents:
    """A received fax's kept documents, as the Communication names them."""

    pdf_url: str
    accepted: AcceptedDocument
    original_url: str | None = None


def caller_number(value: str) -> str | None:
    """The caller's number when it is E.164 (carriers say "anonymous" or worse for hidden numbers)."""
    return value if E164.fullmatch(value) else None


def _pages(pages: int) -> str:
    return f"{pages} page{'s' if pages != 1 else ''}"


def _device(device_id: str, number: str | None, name: str) -> dict[str, Any]:
    device: dict[str, Any] = {"resourceType": "Device", "id": device_id}
    if number is not None:
        device["identifier"] = [{"system": CALLER_NUMBER_SYSTEM, "value": number}]
    device["deviceName"] = [{"name": name, "type": "user-friendly-name"}]
    return device


def received_communication(
    fax_id: str, notice: InboundNotice, owner: str | None, documents: Documents | None, moment: datetime
) -> dict[str, Any]:
    """The Communication of a received fax; ``documents`` None: the reception failed (``stopped``)."""
    caller = caller_number(notice.from_number)
    contained = [_device(SENDER_ID, caller, f"Fax machine at {caller or HIDDEN}")]
    if owner is not None:
        recipient = {"reference": owner}
    else:
        contained.append(_device(RECIPIENT_ID, notice.to_number, f"Fax line {notice.to_number}"))
        recipient = {"reference": f"#{RECIPIENT_ID}"}
    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "contained": contained,
        "identifier": [fax_identifier(fax_id)],
        "status": "completed",
        "category": [inbound_category()],
        "medium": [fax_medium()],
        "sent": format_instant(min(notice.occurred_at, moment)),
        "received": format_instant(moment),
        "recipient": [recipient],
        "sender": {"reference": f"#{SENDER_ID}"},
    }
    if documents is None:
        failure: Failure = notice.failure or Failure("UNKNOWN", "The fax was not received.")
        communication["status"] = "stopped"
        communication["statusReason"] = {
            "coding": [{"system": FAILURE_REASON_SYSTEM, "code": failure.code}],
            "text": failure.message,
        }
        communication["extension"] = [inbound_status_extension("FAILED")]
        return communication
    info = documents.accepted.info
    communication["extension"] = [
        pages_extension(info.pages),
        inbound_status_extension("PARTIAL" if notice.partial else "RECEIVED"),
    ]
    payload = [
        {
            "contentAttachment": {
                "url": documents.pdf_url,
                "contentType": PDF,
                "title": f"Fax from {caller or HIDDEN} ({_pages(info.pages)})",
                "size": info.size,
                "hash": info.sha1,
                "creation": format_instant(moment),
            }
        }
    ]
    original = documents.accepted.original
    if documents.original_url is not None and original is not None:
        payload.append(
            {
                "contentAttachment": {
                    "url": documents.original_url,
                    "contentType": documents.accepted.original_type or "application/octet-stream",
                    "title": "The fax as the carrier delivered it",
                    "size": len(original),
                    "hash": base64.b64encode(hashlib.sha1(original).digest()).decode(),
                }
            }
        )
    communication["payload"] = payload
    if notice.partial:
        communication["note"] = [{"text": "Only part of this fax came through; ask the sender to send it again."}]
    return communication


def triage_task(
    communication_id: str, fax_id: str, notice: InboundNotice, accepted: AcceptedDocument, owner: str | None
) -> dict[str, Any]:
    """The staff's work item: file this fax to a patient (``$file``); searchable as ``Task?status=requested``."""
    description = f"Inbound fax from {caller_number(notice.from_number) or HIDDEN} ({_pages(accepted.info.pages)})"
    if notice.partial:
        description += ", partly received"
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [{"system": FAX_IDENTIFIER_SYSTEM, "value": fax_id}],
        "status": "requested",
        "intent": "order",
        "priority": "routine",
        "code": {
            "coding": [{"system": TASK_CODE_SYSTEM, "code": TRIAGE_CODE, "display": "File an inbound fax"}],
            "text": "File an inbound fax",
        },
        "description": description,
        "focus": {"reference": f"Communication/{communication_id}"},
        "authoredOn": format_instant(now()),
    }
    if owner is not None:
        task["owner"] = {"reference": owner}
    return task
