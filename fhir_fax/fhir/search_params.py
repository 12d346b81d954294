"""The R4B search parameters this server supports beyond ``_id`` and ``_lastUpdated``.

The directory types' (Patient, Practitioner, Organization ...) are in ``search_params_directory``.
Communication's come from the FHIR R4B specification (they are FHIR, not fax, knowledge).
Indexed ones get a MongoDB index at start-up; the per-patient query has its own compound
index matching the default sort, so ``Communication?patient=X`` reads only what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymongo import DESCENDING

from .search import CREATED_FIELD, SearchParameter, SearchRegistry, indexed_parameter
from .search_types import KEYS, DateKind, ReferenceKind, TokenKind

EVENT_STATUS = "http://hl7.org/fhir/event-status"
RECIPIENT_TARGETS = (
    "CareTeam", "Device", "Group", "HealthcareService", "Organization", "Patient",
    "Practitioner", "PractitionerRole", "RelatedPerson",
)  # fmt: skip
SENDER_TARGETS = (
    "Device", "HealthcareService", "Organization", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson",
)  # fmt: skip


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def references(element: str, only_type: str | None = None) -> Callable[[dict[str, Any]], list[str]]:
    def extract(resource: dict[str, Any]) -> list[str]:
        found = [r.get("reference") for r in _list(resource.get(element)) if isinstance(r, dict)]
        return [r for r in found if r and (only_type is None or r.startswith(f"{only_type}/"))]

    return extract


def codings(element: str) -> Callable[[dict[str, Any]], list[tuple[str | None, str | None]]]:
    def extract(resource: dict[str, Any]) -> list[tuple[str | None, str | None]]:
        return [
            (coding.get("system"), coding.get("code"))
            for concept in _list(resource.get(element))
            for coding in concept.get("coding", [])
        ]

    return extract


def identifiers(resource: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    return [(i.get("system"), i.get("value")) for i in _list(resource.get("identifier"))]


def status(resource: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(EVENT_STATUS, resource.get("status"))]


def date_of(element: str) -> Callable[[dict[str, Any]], list[str]]:
    def extract(resource: dict[str, Any]) -> list[str]:
        return [resource[element]] if resource.get(element) else []

    return extract


COMMUNICATION: tuple[SearchParameter, ...] = (
    indexed_parameter(
        ReferenceKind("based-on", references("basedOn")),
        "reference", "Request fulfilled by this communication", "Communication.basedOn",
    ),
    indexed_parameter(
        TokenKind("category", codings("category")),
        "token", "Message category", "Communication.category",
    ),
    indexed_parameter(
        ReferenceKind("encounter", references("encounter"), targets=("Encounter",)),
        "reference", "Encounter created as part of", "Communication.encounter",
    ),
    indexed_parameter(
        TokenKind("identifier", identifiers),
        "token", "Unique identifier", "Communication.identifier", indexed=True,
    ),
    indexed_parameter(
        TokenKind("medium", codings("medium")),
        "token", "A channel of communication", "Communication.medium", indexed=True,
    ),
    indexed_parameter(
        ReferenceKind("part-of", references("partOf")),
        "reference", "Part of this action", "Communication.partOf",
    ),
    indexed_parameter(
        ReferenceKind("patient", references("subject", "Patient"), targets=("Patient",)),
        "reference", "Focus of message (a Patient)", "Communication.subject.where(resolve() is Patient)",
    ),
    indexed_parameter(
        DateKind("received", date_of("received")),
        "date", "When received", "Communication.received", sortable=True,
    ),
    indexed_parameter(
        ReferenceKind("recipient", references("recipient"), targets=RECIPIENT_TARGETS),
        "reference", "Message recipient", "Communication.recipient", indexed=True,
    ),
    indexed_parameter(
        ReferenceKind("sender", references("sender"), targets=SENDER_TARGETS),
        "reference", "Message sender", "Communication.sender", indexed=True,
    ),
    indexed_parameter(
        DateKind("sent", date_of("sent")),
        "date", "When sent", "Communication.sent", sortable=True, indexed=True,
    ),
    indexed_parameter(
        TokenKind("status", status),
        "token", "preparation | in-progress | not-done | on-hold | stopped | completed | entered-in-error | unknown",
        "Communication.status", sortable=True, indexed=True,
    ),
    indexed_parameter(
        ReferenceKind("subject", references("subject"), targets=("Group", "Patient")),
        "reference", "Focus of message", "Communication.subject", indexed=True,
    ),
)  # fmt: skip


def entities(only_type: str | None = None) -> Callable[[dict[str, Any]], list[str]]:
    def extract(resource: dict[str, Any]) -> list[str]:
        found = [(e.get("what") or {}).get("reference") for e in _list(resource.get("entity"))]
        return [r for r in found if r and (only_type is None or r.startswith(f"{only_type}/"))]

    return extract


AUDIT_EVENT: tuple[SearchParameter, ...] = (
    indexed_parameter(
        ReferenceKind("entity", entities()), "reference", "Specific instance of resource", "AuditEvent.entity.what",
        indexed=True,
    ),
    indexed_parameter(
        ReferenceKind("patient", entities("Patient"), targets=("Patient",)),
        "reference", "Identity of the patient the event is about", "AuditEvent.entity.what.where(resolve() is Patient)",
        indexed=True,
    ),
    indexed_parameter(
        DateKind("date", date_of("recorded")), "date", "Time when the event was recorded", "AuditEvent.recorded",
        sortable=True,
    ),
    indexed_parameter(
        TokenKind("action", lambda r: [(None, r.get("action"))]), "token", "Type of action performed",
        "AuditEvent.action",
    ),
    indexed_parameter(
        TokenKind("outcome", lambda r: [(None, r.get("outcome"))]), "token", "Whether the event succeeded or failed",
        "AuditEvent.outcome",
    ),
)  # fmt: skip

# All of one patient's faxes, newest created first: the index gives both the match and the (default) order,
# and, being on a key written once, it is not rewritten at each status change.
PER_PATIENT_INDEX = [(f"{KEYS}.patient.r", 1), (CREATED_FIELD, DESCENDING)]


def default_registry() -> SearchRegistry:
    # The directory's parameters build on this module's extractors, so that module is imported here.
    from .search_params_directory import register_directory

    registry = SearchRegistry(compound_indexes={"Communication": {"patient_created": PER_PATIENT_INDEX}})
    for parameter in COMMUNICATION:
        registry.register("Communication", parameter)
    for parameter in AUDIT_EVENT:
        registry.register("AuditEvent", parameter)
    register_directory(registry)
    return registry
