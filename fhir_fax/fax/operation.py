"""The ``$send-fax`` operation: its OperationDefinition, its inputs and its handler, in one declaration.

Both doors (FHIR ``Parameters`` on ``POST /fhir/Communication/$send-fax`` and the SDK's JSON on
``POST /fax/v1/send``) are parsed from this one definition by the generic parser of
``fhir.operations``: parameter names, value types, cardinality and allowed reference targets, so what
``/metadata`` advertises and what the server accepts cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Response

from ..fhir.http import FHIRResponse, version_headers
from ..fhir.operations import Inputs, Operation, OperationCall, Signature
from .cover import MAX_NOTE
from .terminology import QUALITIES, RECIPIENT_TYPES, SENDER_TYPES

if TYPE_CHECKING:
    from .routes import FaxAPI

MAX_DOCUMENTS = 20
OPERATION_ID = "send-fax"
OPERATION_URL = "urn:fhir-fax:OperationDefinition:send-fax"
PROFILE = "http://hl7.org/fhir/StructureDefinition/"


def _targets(types: tuple[str, ...]) -> list[str]:
    return [PROFILE + t for t in types]


SEND_FAX_DEFINITION: dict[str, Any] = {
    "resourceType": "OperationDefinition",
    "id": OPERATION_ID,
    "url": OPERATION_URL,
    "version": "1.0.0",
    "name": "SendFax",
    "title": "Send a fax",
    "status": "active",
    "kind": "operation",
    "affectsState": True,
    "code": "send-fax",
    "description": (
        "Sends a document from the project's Z3 storage as a fax, records it as a Communication "
        "(status in-progress, outbound fax status QUEUED) and queues it for delivery. A request with an "
        "Idempotency-Key (or x-oystehr-request-id) header is carried out at most once."
    ),
    "resource": ["Communication"],
    "system": False,
    "type": True,
    "instance": False,
    "parameter": [
        {
            "name": "media",
            "use": "in",
            "min": 1,
            "max": str(MAX_DOCUMENTS),
            "type": "url",
            "documentation": "Z3 URL of the document: z3://{bucket}/{key} or {base}/v1/z3/{bucket}/{key}. "
            f"Repeat it (up to {MAX_DOCUMENTS} times) to fax several documents in one fax, in that order.",
        },
        {
            "name": "quality",
            "use": "in",
            "min": 1,
            "max": "1",
            "type": "code",
            "documentation": "Fax resolution: " + " | ".join(QUALITIES) + ".",
        },
        {
            "name": "sender",
            "use": "in",
            "min": 1,
            "max": "1",
            "type": "Reference",
            "targetProfile": _targets(SENDER_TYPES),
            "documentation": "Who sends the fax; needs a fax telecom with an onboarded E.164 number.",
        },
        {
            "name": "recipient",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "Reference",
            "targetProfile": _targets(RECIPIENT_TYPES),
            "documentation": "Who receives the fax; needs a fax telecom with an E.164 number. "
            "Give exactly one of recipient and recipientNumber.",
        },
        {
            "name": "recipientNumber",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "string",
            "documentation": "E.164 fax number to send to when there is no recipient resource; recorded as a "
            "contained Practitioner.",
        },
        {
            "name": "patient",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "Reference",
            "targetProfile": _targets(("Patient",)),
            "documentation": "The patient the fax is about; becomes Communication.subject.",
        },
        {
            "name": "coverPage",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "boolean",
            "documentation": "Put a cover sheet first (sender, recipient, date, page count, note and a "
            "confidentiality notice; no patient information unless the project allows the patient's name). "
            "Absent: the project's default.",
        },
        {
            "name": "coverNote",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "string",
            "documentation": f"A note for the cover sheet, at most {MAX_NOTE} characters; implies coverPage "
            "unless coverPage is false.",
        },
        {"name": "return", "use": "out", "min": 1, "max": "1", "type": "Communication"},
    ],
}

SIGNATURE = Signature(SEND_FAX_DEFINITION)


def allowed_types(parameter: str) -> tuple[str, ...]:
    """Resource types a Reference parameter may point to, as the definition says."""
    return SIGNATURE.targets(parameter)


@dataclass(frozen=True)
class SendFaxRequest:
    """The inputs of one send, as plain strings, whichever door they came through."""

    media: str | tuple[str, ...]  # one document, or several faxed in this order
    quality: str
    sender: str
    recipient: str | None = None
    recipientNumber: str | None = None
    patient: str | None = None
    coverPage: bool | None = None
    coverNote: str | None = None
    resendOf: str | None = None  # set by a resend (not a parameter): the Communication sent again

    @classmethod
    def of(cls, inputs: Inputs) -> SendFaxRequest:
        """From inputs parsed (and checked: names, types, cardinality) against the definition."""
        values = dict(inputs)
        media = values.pop("media")
        documents = tuple(media) if isinstance(media, list) else media
        if isinstance(documents, tuple) and len(documents) == 1:
            documents = documents[0]
        return cls(media=documents, **values)

    @property
    def documents(self) -> tuple[str, ...]:
        return (self.media,) if isinstance(self.media, str) else tuple(self.media)

    def fingerprint(self) -> str:
        """Stable hash of the inputs: a repeated idempotency key must come with the same request.

        Inputs left out are not hashed, so a plain one-document send hashes as it did before packets existed.
        """
        data = asdict(self)
        data["media"] = self.media if isinstance(self.media, str) else list(self.media)
        for name in ("coverPage", "coverNote", "resendOf"):
            if data[name] is None:
                del data[name]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def parse_sdk_body(body: Any) -> SendFaxRequest:
    """Inputs from the SDK's JSON body (``{"media": ..., "quality": ..., ...}``), read by the same definition."""
    return SendFaxRequest.of(SIGNATURE.parse_json(body))


def send_fax_operation(fax: FaxAPI) -> Operation:
    """``$send-fax`` on Communication, answered by ``fax``'s service."""

    async def send_fax(call: OperationCall) -> Response:
        request = SendFaxRequest.of(call.inputs)
        result = await fax.require_service().send(request, await fax.caller(call.request))
        headers = version_headers(result.communication)
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        return FHIRResponse(result.communication, headers=headers)

    return Operation(
        SEND_FAX_DEFINITION,
        send_fax,
        access=("Fax:Send", "Fax:Fax"),
        summary="Send a fax (FHIR operation)",
        tags=["Fax (FHIR)"],
    )


PREVIEW_FAX_DEFINITION: dict[str, Any] = {
    **SEND_FAX_DEFINITION,
    "id": "preview-fax",
    "url": "urn:fhir-fax:OperationDefinition:preview-fax",
    "name": "PreviewFax",
    "title": "Preview a fax before sending it (dry run)",
    "affectsState": False,
    "code": "preview-fax",
    "description": (
        "Checks a $send-fax request exactly as a send would and shows one page of the fax it would transmit "
        "(the cover sheet first, then each document) with the page count it would send. Nothing is stored, "
        "pinned or queued."
    ),
    "parameter": [
        *(p for p in SEND_FAX_DEFINITION["parameter"] if p["use"] == "in"),
        {
            "name": "page",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "positiveInt",
            "documentation": "The page to show, from 1 (default 1).",
        },
        {"name": "pages", "use": "out", "min": 1, "max": "1", "type": "integer"},
        {"name": "image", "use": "out", "min": 1, "max": "1", "type": "Attachment"},
    ],
}
PREVIEW_SIGNATURE = Signature(PREVIEW_FAX_DEFINITION)


def parse_preview(inputs: Inputs) -> tuple[SendFaxRequest, int]:
    """A dry run's inputs: the send it rehearses, and the page to show."""
    values = dict(inputs)
    page = values.pop("page", None)
    return SendFaxRequest.of(values), 1 if page is None else int(page)


def preview_fax_operation(fax: FaxAPI) -> Operation:
    """``$preview-fax`` on Communication: a dry run of ``$send-fax`` answered with a Parameters resource."""

    async def preview_fax(call: OperationCall) -> Response:
        from .preview import dry_run

        request, page = parse_preview(call.inputs)
        shown = await dry_run(fax.require_service(), request, await fax.caller(call.request), page)
        await fax.documents_shown(call.request, shown.documents)
        image, pages = shown.image, shown.pages
        parameters = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "pages", "valueInteger": pages},
                {
                    "name": "image",
                    "valueAttachment": {
                        "contentType": "image/png",
                        "data": base64.b64encode(image).decode(),
                        "title": f"Page {page} of {pages}",
                    },
                },
            ],
        }
        return FHIRResponse(parameters)

    return Operation(
        PREVIEW_FAX_DEFINITION,
        preview_fax,
        access=("Fax:Send", "Fax:Fax"),
        summary="Preview a fax before sending it (FHIR operation, dry run)",
        tags=["Fax (FHIR)"],
    )
