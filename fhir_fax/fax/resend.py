"""Resend: the same frozen documents and cover choice, faxed again as a new Communication linked to the original.

``POST /fhir/Communication/{id}/$resend`` (an instance-level operation) and ``POST /fax/v1/resend``
(``{"communicationId": ...}``) both come here. A resend is a send in every other respect: ``Fax:Send``,
read access to everything it names, the sender's number still onboarded, the idempotency key, one
transaction. What it sends is what the original job pinned (each document's version and hash) and the
original's cover choice and note; the cover is drawn again for the new recipient, date and page count.

The link is ``Communication.partOf`` (``Communication/{original}``), not an extension: ``part-of`` is a
standard search parameter, so a fax log finds every resend of a fax with ``Communication?part-of=...`` and
any FHIR client reads the link without knowing our extensions; R4B defines partOf as the larger event this
Communication is a step of, which is what the original fax is to its resends. The original is not changed
(no new version, no new status): its delivery history stays what happened.

A fax still in flight (its job not done) is refused with 409: resending it now could deliver it twice.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response

from ..errors import Conflict, Invalid, Unprocessable
from ..fhir.http import FHIRResponse, version_headers
from ..fhir.operations import Operation, OperationCall, Signature
from .jobs import JobState
from .media import MediaProblem, job_documents, parse_media_url
from .operation import PROFILE, SendFaxRequest
from .outbox import Outbox
from .send import Caller, FaxService, SendResult
from .terminology import RECIPIENT_TYPES

if TYPE_CHECKING:
    from .routes import FaxAPI

RESEND_DEFINITION: dict[str, Any] = {
    "resourceType": "OperationDefinition",
    "id": "resend",
    "url": "urn:fhir-fax:OperationDefinition:resend",
    "version": "1.0.0",
    "name": "Resend",
    "title": "Resend a fax",
    "status": "active",
    "kind": "operation",
    "affectsState": True,
    "code": "resend",
    "description": (
        "Faxes a sent Communication's documents again, exactly as they were frozen when it was sent, with the same "
        "cover choice, as a new Communication whose partOf is the original. The original is not changed. A fax "
        "still in flight cannot be resent (409). A request with an Idempotency-Key is carried out at most once."
    ),
    "resource": ["Communication"],
    "system": False,
    "type": False,
    "instance": True,
    "parameter": [
        {
            "name": "recipient",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "Reference",
            "targetProfile": [PROFILE + t for t in RECIPIENT_TYPES],
            "documentation": "A new recipient (needs a fax telecom); at most one of recipient and recipientNumber. "
            "Neither: the original's.",
        },
        {
            "name": "recipientNumber",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "string",
            "documentation": "A new E.164 fax number to send to.",
        },
        {"name": "return", "use": "out", "min": 1, "max": "1", "type": "Communication"},
    ],
}
SIGNATURE = Signature(RESEND_DEFINITION)
SDK_SIGNATURE = Signature(
    {
        "code": "resend",
        "parameter": [
            {"name": "communicationId", "use": "in", "min": 1, "max": "1", "type": "string"},
            *RESEND_DEFINITION["parameter"],
        ],
    }
)


async def resend(
    service: FaxService,
    original: dict[str, Any],
    caller: Caller,
    recipient: str | None = None,
    recipient_number: str | None = None,
) -> SendResult:
    """Send ``original``'s fax again (optionally to someone else); the original is read, never written."""
    if recipient is not None and recipient_number is not None:
        raise Invalid(
            "Give at most one of 'recipient' and 'recipientNumber' (neither: the original recipient).",
            expression=["recipient", "recipientNumber"],
        )
    communication_id = str(original["id"])
    job = await Outbox(service.database).for_communication(communication_id)
    if job is None:
        raise Unprocessable(
            f"Communication/{communication_id} is not a fax sent by this server, so there is nothing to resend.",
            expression=["communicationId"],
        )
    if job.state is not JobState.DONE:
        raise Conflict(
            f"Communication/{communication_id} is still in flight (outbound status {job.status.value}); "
            "wait until it is delivered or stopped, then resend it.",
            expression=["communicationId"],
        )
    if recipient is None and recipient_number is None:
        recipient, recipient_number = original_recipient(original, job.to_number)
    documents = job_documents(job)
    urls = attachment_urls(original, [d.media for d in documents], caller.project_api_bases)
    subject = (original.get("subject") or {}).get("reference")
    sender = (original.get("sender") or {}).get("reference")
    if not isinstance(sender, str) or not sender:
        raise Unprocessable(
            f"Communication/{communication_id} names no sender (sender.reference), so it cannot be resent as it was; "
            "send it as a new fax with a sender, or restore the original's sender.",
            expression=["sender"],
        )
    request = SendFaxRequest(
        media=urls[0] if len(urls) == 1 else tuple(urls),
        quality=job.quality,
        sender=sender,
        recipient=recipient,
        recipientNumber=recipient_number,
        patient=subject if isinstance(subject, str) else None,
        coverPage=job.cover is not None,
        coverNote=None if job.cover is None else job.cover.get("note"),
        resendOf=communication_id,
    )
    shown = [(entry.get("contentAttachment") or {}).get("contentType") for entry in original.get("payload", [])]
    pinned = tuple(
        replace(info, content_type=info.content_type or (shown[index] if index < len(shown) else None))
        for index, info in enumerate(document.info() for document in documents)
    )
    return await service.send(request, caller, pinned=pinned)


def original_recipient(original: dict[str, Any], number: str) -> tuple[str | None, str | None]:
    """The original's recipient: its reference, or (a contained one, from recipientNumber) its number."""
    reference = ((original.get("recipient") or [{}])[0]).get("reference")
    if isinstance(reference, str) and not reference.startswith("#"):
        return reference, None
    return None, number


def attachment_urls(original: dict[str, Any], pinned: list[str], bases: tuple[str, ...]) -> list[str]:
    """The document URLs as the original's payload shows them (as its sender wrote them) when each still names
    the document the job pinned; else the job's own ``z3://`` URLs. Either way the pinned versions are sent."""
    urls = [(entry.get("contentAttachment") or {}).get("url") for entry in original.get("payload", []) if entry]
    if len(urls) != len(pinned):
        return pinned
    for url, own in zip(urls, pinned, strict=True):
        try:
            if not isinstance(url, str) or str(parse_media_url(url, bases)) != own:
                return pinned
        except MediaProblem:
            return pinned
    return [str(url) for url in urls]


async def load_original(fax: FaxAPI, request: Request, communication_id: str) -> dict[str, Any]:
    """The Communication to resend, read through the gate (its id's rules, the patient in context)."""
    if not communication_id or not isinstance(communication_id, str):
        raise Invalid("communicationId must be the id of a Communication.", expression=["communicationId"])
    await fax.fhir.authorize(request, "FHIR:Read", f"FHIR:Communication:{communication_id}")
    original = await fax.fhir.store.read("Communication", communication_id)  # 404 or 410 naming it
    await fax.fhir.admit(request, "FHIR:Read", original)
    return original


def resend_operation(fax: FaxAPI) -> Operation:
    """``$resend`` on one Communication, answered by ``fax``'s service."""

    async def handle(call: OperationCall) -> Response:
        original = await load_original(fax, call.request, call.resource_id or "")
        result = await resend(
            fax.require_service(),
            original,
            await fax.caller(call.request),
            call.inputs.get("recipient"),
            call.inputs.get("recipientNumber"),
        )
        headers = version_headers(result.communication)
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        return FHIRResponse(result.communication, headers=headers)

    return Operation(
        RESEND_DEFINITION,
        handle,
        access=("Fax:Send", "Fax:Fax"),
        summary="Resend a fax (FHIR operation)",
        tags=["Fax (FHIR)"],
    )
