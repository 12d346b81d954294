"""The Patient compartment: which resources belong to one patient (FHIR R4B compartment definition).

Used by compartment searches (``Patient/x/Communication``) and by tokens limited to one patient (SMART
``patient/`` scopes with a patient in context): their searches only see the compartment, and reads or
writes outside it are refused. Types outside the definition (Practitioner, Organization, ...) hold no
patient's data and are not limited, except Subscription: it names no patient FHIR's definition would follow,
yet its criteria name patients and its channel headers hold the receiver's credentials, so a patient-limited
token only reaches those made by a token with the same patient in context (the subscriber kept with it).
"""

from __future__ import annotations

from typing import Any

from .search import SearchRegistry
from .search_types import KEYS
from .store import PRIVATE, RESERVED

# Compartment members of each type: the search parameters that point at the patient.
PATIENT_COMPARTMENT: dict[str, tuple[str, ...]] = {
    "Communication": ("subject", "sender", "recipient"),
    "AuditEvent": ("patient",),
    "DocumentReference": ("subject", "author"),
    "CareTeam": ("patient", "participant"),
    "RelatedPerson": ("patient",),
    "Task": ("patient",),  # Task.for: a triage Task joins its patient's compartment once the fax is filed
}
# Kept to the patient in context of whoever wrote them (the gate records it as the private ``patient``).
SUBSCRIBER_KEPT = frozenset({"Subscription"})
SUBSCRIBER_PATIENT = f"{RESERVED}.{PRIVATE}.patient"
LIMITED_TYPES = frozenset({"Patient", *PATIENT_COMPARTMENT, *SUBSCRIBER_KEPT})


def compartment_filter(resource_type: str, patient_id: str) -> dict[str, Any]:
    """A store filter for the ``resource_type`` resources in ``Patient/patient_id``'s compartment."""
    if resource_type == "Patient":
        return {"_id": patient_id}
    if resource_type in SUBSCRIBER_KEPT:
        return {SUBSCRIBER_PATIENT: patient_id}
    reference = f"Patient/{patient_id}"
    return {"$or": [{f"{KEYS}.{member}.r": reference} for member in PATIENT_COMPARTMENT[resource_type]]}


def in_compartment(resource: dict[str, Any], patient_id: str, registry: SearchRegistry) -> bool:
    """Does ``resource`` belong to the patient's compartment (always true for types it does not cover)?

    ``SUBSCRIBER_KEPT`` types are not decided here (their subscriber is not in the resource): see the gate.
    """
    resource_type = resource.get("resourceType", "")
    if resource_type == "Patient":
        return resource.get("id") == patient_id
    members = PATIENT_COMPARTMENT.get(resource_type)
    indexer = registry.indexer(resource_type)
    if members is None or indexer is None:
        return True
    keys = indexer({**resource, "id": resource.get("id", "")})["keys"]
    reference = f"Patient/{patient_id}"
    return any(key.get("r") == reference for member in members for key in keys.get(member, ()))
