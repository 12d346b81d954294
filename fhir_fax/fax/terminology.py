"""Every URL, system and code the fax domain writes, in one place (compatible with the hosted service)."""

from __future__ import annotations

from typing import Any

# Communication.medium: the seed's system string first (clients compare it), then the canonical HL7 one.
PARTICIPATION_MODE_SEED = "https://terminology.hl7.org/6.0.2/ValueSet-v3-ParticipationMode.html"
PARTICIPATION_MODE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
FAX_MEDIUM_CODE = "FAXWRIT"
FAX_MEDIUM_DISPLAY = "telefax"

FAX_IDENTIFIER_SYSTEM = "https://identifiers.oystehr.com/fax"
FAX_CODE_SYSTEM = "https://terminology.fhir.oystehr.com/CodeSystem/fax"

OUTBOUND_STATUS_EXTENSION = "https://extensions.fhir.oystehr.com/outbound-fax-status"
OUTBOUND_STATUS_SYSTEM = "https://terminology.fhir.oystehr.com/CodeSystem/outbound-fax-status"
PAGES_EXTENSION = "https://extensions.fhir.oystehr.com/fax-pages"
FAILURE_REASON_SYSTEM = "https://terminology.fhir.oystehr.com/CodeSystem/fax-failure-reason"

# Outbound status codes and their displays, in the order a fax moves through them.
OUTBOUND_STATUSES: dict[str, str] = {
    "QUEUED": "queued",
    "PROCESSING": "processing",
    "SENDING": "sending",
    "DELIVERED": "delivered",
    "STOPPED": "stopped",
}

QUALITIES = ("standard", "fine", "superfine")

SENDER_TYPES = (
    "HealthcareService",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "RelatedPerson",
)
RECIPIENT_TYPES = ("CareTeam", *SENDER_TYPES)


def fax_medium() -> dict[str, Any]:
    return {
        "coding": [
            {"system": PARTICIPATION_MODE_SEED, "code": FAX_MEDIUM_CODE, "display": FAX_MEDIUM_DISPLAY},
            {"system": PARTICIPATION_MODE, "code": FAX_MEDIUM_CODE, "display": FAX_MEDIUM_DISPLAY},
        ],
        "text": FAX_MEDIUM_DISPLAY,
    }


def fax_identifier(fax_id: str) -> dict[str, Any]:
    return {
        "system": FAX_IDENTIFIER_SYSTEM,
        "value": fax_id,
        "type": {"coding": [{"system": FAX_CODE_SYSTEM, "code": "FAX-ID", "display": "Fax ID", "version": "1.0.0"}]},
    }


def outbound_status_extension(code: str) -> dict[str, Any]:
    display = OUTBOUND_STATUSES[code]
    return {
        "url": OUTBOUND_STATUS_EXTENSION,
        "valueCodeableConcept": {
            "coding": [{"system": OUTBOUND_STATUS_SYSTEM, "code": code, "display": display}],
            "text": display,
        },
    }


# -- inbound faxes (received from a carrier) -------------------------------------------------------------

# Present on every received fax and never on a sent one: how clients (Ottehr among them) tell direction.
INBOUND_STATUS_EXTENSION = "https://extensions.fhir.oystehr.com/inbound-fax-status"
INBOUND_STATUS_SYSTEM = "https://terminology.fhir.oystehr.com/CodeSystem/inbound-fax-status"
INBOUND_STATUSES: dict[str, str] = {
    "RECEIVED": "received",
    "PARTIAL": "partially received",
    "FAILED": "reception failed",
}
# Communication.category of a received fax, so that a search can ask for inbound faxes only.
FAX_DIRECTION_SYSTEM = "urn:fhir-fax:fax-direction"
# The caller's number on the contained sender Device: Ottehr reads the identifier with this system first.
CALLER_NUMBER_SYSTEM = "phone"
# The triage Task of a received fax.
TASK_CODE_SYSTEM = "urn:fhir-fax:task"
TRIAGE_CODE = "file-inbound-fax"
SUGGESTED_PATIENT = "suggested-patient"
SUGGESTED_SENDER = "suggested-sender"
SUGGESTION_CONFIDENCE_EXTENSION = "urn:fhir-fax:extension:suggestion-confidence"
SUGGESTION_EVIDENCE_EXTENSION = "urn:fhir-fax:extension:suggestion-evidence"
FILED_DOCUMENT_SYSTEM = "urn:fhir-fax:filed-fax"  # DocumentReference.identifier: the fax it was filed from


def inbound_status_extension(code: str) -> dict[str, Any]:
    display = INBOUND_STATUSES[code]
    return {
        "url": INBOUND_STATUS_EXTENSION,
        "valueCodeableConcept": {
            "coding": [{"system": INBOUND_STATUS_SYSTEM, "code": code, "display": display}],
            "text": display,
        },
    }


def inbound_category() -> dict[str, Any]:
    return {"coding": [{"system": FAX_DIRECTION_SYSTEM, "code": "inbound", "display": "Inbound fax"}]}


def pages_extension(pages: int) -> dict[str, Any]:
    return {"url": PAGES_EXTENSION, "valueInteger": pages}
