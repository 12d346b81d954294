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
