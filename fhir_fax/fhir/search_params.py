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
    add_inbound_parameters(registry)
    register_directory(registry)
    return registry


# -- received faxes: Task (the triage queue), DocumentReference (filed faxes), the caller's number ----------------


def _plain_token(element: str) -> Callable[[dict[str, Any]], list[tuple[str | None, str | None]]]:
    def extract(resource: dict[str, Any]) -> list[tuple[str | None, str | None]]:
        value = resource.get(element)
        return [(None, value)] if isinstance(value, str) else []

    return extract


def _concept(element: str) -> Callable[[dict[str, Any]], list[tuple[str | None, str | None]]]:
    def extract(resource: dict[str, Any]) -> list[tuple[str | None, str | None]]:
        return [(c.get("system"), c.get("code")) for c in (resource.get(element) or {}).get("coding", [])]

    return extract


def _related(resource: dict[str, Any]) -> list[str]:
    related = (resource.get("context") or {}).get("related", [])
    return [r["reference"] for r in related if isinstance(r, dict) and isinstance(r.get("reference"), str)]


def sender_numbers(resource: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    """The numbers of a contained sender (a received fax's caller Device): identifiers and telecoms."""
    reference = (resource.get("sender") or {}).get("reference") or ""
    if not reference.startswith("#"):
        return []
    found: list[tuple[str | None, str | None]] = []
    for contained in _list(resource.get("contained")):
        if isinstance(contained, dict) and contained.get("id") == reference[1:]:
            found += [(i.get("system"), i.get("value")) for i in _list(contained.get("identifier"))]
            found += [(t.get("system"), t.get("value")) for t in _list(contained.get("telecom"))]
    return found


TASK: tuple[SearchParameter, ...] = (
    indexed_parameter(TokenKind("status", _plain_token("status")), "token", "Search by task status", "Task.status",
                      sortable=True, indexed=True),
    indexed_parameter(ReferenceKind("focus", references("focus")), "reference", "Search by task focus", "Task.focus",
                      indexed=True),
    indexed_parameter(ReferenceKind("owner", references("owner")), "reference", "Search by task owner", "Task.owner"),
    indexed_parameter(TokenKind("code", _concept("code")), "token", "Search by task code", "Task.code"),
    indexed_parameter(ReferenceKind("subject", references("for")), "reference", "Search by subject", "Task.for"),
    indexed_parameter(ReferenceKind("patient", references("for", "Patient"), targets=("Patient",)), "reference",
                      "Search by patient", "Task.for.where(resolve() is Patient)", indexed=True),
    indexed_parameter(TokenKind("identifier", identifiers), "token", "Search for a task instance by its business "
                      "identifier", "Task.identifier", indexed=True),
    indexed_parameter(DateKind("authored-on", date_of("authoredOn")), "date", "Search by creation date",
                      "Task.authoredOn", sortable=True),
)  # fmt: skip

DOCUMENT_REFERENCE: tuple[SearchParameter, ...] = (
    indexed_parameter(ReferenceKind("subject", references("subject")), "reference", "Who/what is the subject of the "
                      "document", "DocumentReference.subject", indexed=True),
    indexed_parameter(ReferenceKind("patient", references("subject", "Patient"), targets=("Patient",)), "reference",
                      "Who/what is the subject of the document", "DocumentReference.subject.where(resolve() is "
                      "Patient)", indexed=True),
    indexed_parameter(ReferenceKind("author", references("author")), "reference", "Who and/or what authored the "
                      "document", "DocumentReference.author", indexed=True),  # a compartment member
    indexed_parameter(TokenKind("status", _plain_token("status")), "token", "current | superseded | "
                      "entered-in-error", "DocumentReference.status"),
    indexed_parameter(TokenKind("type", _concept("type")), "token", "Kind of document", "DocumentReference.type"),
    indexed_parameter(TokenKind("category", codings("category")), "token", "Categorization of document",
                      "DocumentReference.category"),
    indexed_parameter(TokenKind("identifier", identifiers), "token", "Identifiers of the document",
                      "DocumentReference.identifier", indexed=True),
    indexed_parameter(ReferenceKind("related", _related), "reference", "Related identifiers or resources",
                      "DocumentReference.context.related", indexed=True),
    indexed_parameter(DateKind("date", date_of("date")), "date", "When this document reference was created",
                      "DocumentReference.date", sortable=True),
)  # fmt: skip

# Not an R4B parameter: the caller's number of a received fax (its contained sender Device), e.g.
# ``Communication?sender-number=phone|+12223334444`` or ``?sender-number=+12223334444``.
SENDER_NUMBER = indexed_parameter(
    TokenKind("sender-number", sender_numbers), "token", "The caller's number of a received fax (contained sender)",
    "Communication.sender.resolve().identifier", indexed=True,
)  # fmt: skip


def add_inbound_parameters(registry: SearchRegistry) -> None:
    """The search parameters received faxes need: the triage queue, filed documents, the caller's number."""
    for parameter in TASK:
        registry.register("Task", parameter)
    for parameter in DOCUMENT_REFERENCE:
        registry.register("DocumentReference", parameter)
    registry.register("Communication", SENDER_NUMBER)
