"""Directory search: the R4B parameters that find people and organisations (a patient picker, a fax recipient).

Patient, Practitioner, PractitionerRole, Organization, HealthcareService, CareTeam and RelatedPerson, by
name, identifier, telecom, active and (Patient) birthdate and gender; PractitionerRole by its practitioner
and organization. Names and expressions are R4B's own (FHIR, not fax, knowledge). A few parameters R4B does
not define for a type that has the element (``telecom`` on Organization, HealthcareService and CareTeam,
``name`` on CareTeam) are this server's, and their documentation says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .search import SearchParameter, SearchRegistry, indexed_parameter
from .search_params import date_of, identifiers, references
from .search_types import BooleanKind, DateKind, ReferenceKind, StringKind, TokenKind

ADMINISTRATIVE_GENDER = "http://hl7.org/fhir/administrative-gender"
STRING_RULE = (
    " Matches the start of any part, ignoring case and accents (Müller: muller, MÜL); :exact matches a whole "
    "part as written, :contains any part that holds the text."
)
HUMAN_NAME = (
    "A server defined search that may match any of the string fields in the HumanName, including family, "
    "given, prefix, suffix and/or text."
)
SERVER_DEFINED = " Defined by this server (R4B has no such parameter for {type})."


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _names(resource: dict[str, Any], element: str) -> list[dict[str, Any]]:
    return [name for name in _list(resource.get(element)) if isinstance(name, dict)]


def human_names(element: str = "name") -> Callable[[dict[str, Any]], list[str]]:
    """Every string part of each HumanName: family first (the sort key), then given, prefix, suffix, text."""

    def extract(resource: dict[str, Any]) -> list[str]:
        parts: list[str] = []
        for name in _names(resource, element):
            parts += _list(name.get("family")) + _list(name.get("given"))
            parts += _list(name.get("prefix")) + _list(name.get("suffix")) + _list(name.get("text"))
        return parts

    return extract


def name_parts(part: str) -> Callable[[dict[str, Any]], list[str]]:
    """One part (``family``, ``given``) of each of the resource's HumanNames."""

    def extract(resource: dict[str, Any]) -> list[str]:
        return [value for name in _names(resource, "name") for value in _list(name.get(part))]

    return extract


def strings(*elements: str) -> Callable[[dict[str, Any]], list[str]]:
    """The string elements (single or repeating) named, in order."""

    def extract(resource: dict[str, Any]) -> list[str]:
        return [value for element in elements for value in _list(resource.get(element))]

    return extract


def telecoms(resource: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    """ContactPoints as tokens: the system (phone, fax, email ...) and the value."""
    return [(c.get("system"), c.get("value")) for c in _list(resource.get("telecom")) if isinstance(c, dict)]


def boolean(element: str) -> Callable[[dict[str, Any]], list[Any]]:
    def extract(resource: dict[str, Any]) -> list[Any]:
        return [resource[element]] if element in resource else []

    return extract


def gender(resource: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(ADMINISTRATIVE_GENDER, resource.get("gender"))]


def name_parameter(
    description: str, expression: str, extract: Callable[[dict[str, Any]], list[str]]
) -> SearchParameter:
    return indexed_parameter(
        StringKind("name", extract), "string", description + STRING_RULE, expression, sortable=True, indexed=True
    )


def identifier_parameter(resource_type: str, description: str) -> SearchParameter:
    return indexed_parameter(
        TokenKind("identifier", identifiers), "token", description, f"{resource_type}.identifier", indexed=True
    )


def telecom_parameter(resource_type: str, description: str, *, standard: bool = True) -> SearchParameter:
    note = "" if standard else SERVER_DEFINED.format(type=resource_type)
    return indexed_parameter(
        TokenKind("telecom", telecoms),
        "token",
        description + " (system|value, the system being phone, fax, email ...)." + note,
        f"{resource_type}.telecom",
        indexed=True,
    )


def active_parameter(resource_type: str, description: str) -> SearchParameter:
    return indexed_parameter(
        BooleanKind("active", boolean("active")), "token", description + " (true or false).", f"{resource_type}.active"
    )


PATIENT: tuple[SearchParameter, ...] = (
    name_parameter(HUMAN_NAME, "Patient.name", human_names()),
    indexed_parameter(
        StringKind("family", name_parts("family")), "string", "A portion of the family name of the patient."
        + STRING_RULE, "Patient.name.family", sortable=True, indexed=True,
    ),
    indexed_parameter(
        StringKind("given", name_parts("given")), "string", "A portion of the given name of the patient."
        + STRING_RULE, "Patient.name.given", sortable=True, indexed=True,
    ),
    indexed_parameter(
        DateKind("birthdate", date_of("birthDate")), "date", "The patient's date of birth", "Patient.birthDate",
        sortable=True, indexed=True,
    ),
    indexed_parameter(
        TokenKind("gender", gender), "token", "Gender of the patient (male | female | other | unknown)",
        "Patient.gender", sortable=True,
    ),
    identifier_parameter("Patient", "A patient identifier"),
    telecom_parameter("Patient", "The value in any kind of telecom details of the patient"),
)  # fmt: skip

PRACTITIONER: tuple[SearchParameter, ...] = (
    name_parameter(HUMAN_NAME, "Practitioner.name", human_names()),
    identifier_parameter("Practitioner", "A practitioner's Identifier"),
    telecom_parameter("Practitioner", "The value in any kind of contact"),
    active_parameter("Practitioner", "Whether the practitioner record is active"),
)

PRACTITIONER_ROLE: tuple[SearchParameter, ...] = (
    identifier_parameter("PractitionerRole", "A practitioner's Identifier"),
    telecom_parameter("PractitionerRole", "The value in any kind of contact"),
    active_parameter("PractitionerRole", "Whether this practitioner role record is in active use"),
    indexed_parameter(
        ReferenceKind("practitioner", references("practitioner"), targets=("Practitioner",)), "reference",
        "Practitioner that is able to provide the defined services for the organization",
        "PractitionerRole.practitioner", indexed=True,
    ),
    indexed_parameter(
        ReferenceKind("organization", references("organization"), targets=("Organization",)), "reference",
        "The identity of the organization the practitioner represents / acts on behalf of",
        "PractitionerRole.organization", indexed=True,
    ),
)  # fmt: skip

ORGANIZATION: tuple[SearchParameter, ...] = (
    name_parameter(
        "A portion of the organization's name or alias.", "Organization.name | Organization.alias",
        strings("name", "alias"),
    ),
    identifier_parameter(
        "Organization", "Any identifier for the organization (not the accreditation issuer's identifier)"
    ),
    telecom_parameter("Organization", "The value in any kind of contact", standard=False),
    active_parameter("Organization", "Is the Organization record active"),
)  # fmt: skip

HEALTHCARE_SERVICE: tuple[SearchParameter, ...] = (
    name_parameter("A portion of the Healthcare service name.", "HealthcareService.name", strings("name")),
    identifier_parameter("HealthcareService", "External identifiers for this item"),
    telecom_parameter("HealthcareService", "The value in any kind of contact", standard=False),
    active_parameter("HealthcareService", "The Healthcare Service is currently marked as active"),
)


def participants(resource: dict[str, Any]) -> list[str]:
    """CareTeam.participant.member references (the compartment's ``participant``)."""
    found: list[str] = []
    for participant in resource.get("participant") or []:
        member = participant.get("member") if isinstance(participant, dict) else None
        reference = member.get("reference") if isinstance(member, dict) else None
        if isinstance(reference, str):
            found.append(reference)
    return found


CARE_TEAM: tuple[SearchParameter, ...] = (
    name_parameter(
        "A portion of the care team's name." + SERVER_DEFINED.format(type="CareTeam"), "CareTeam.name",
        strings("name"),
    ),
    identifier_parameter("CareTeam", "External Ids for this team"),
    telecom_parameter("CareTeam", "The value in any kind of contact", standard=False),
    indexed_parameter(ReferenceKind("subject", references("subject")), "reference",
                      "Who care plan is for", "CareTeam.subject", indexed=True),
    indexed_parameter(ReferenceKind("patient", references("subject", "Patient"), targets=("Patient",)), "reference",
                      "Who care plan is for", "CareTeam.subject.where(resolve() is Patient)", indexed=True),
    indexed_parameter(ReferenceKind("participant", participants), "reference",
                      "Who is involved", "CareTeam.participant.member", indexed=True),
)  # fmt: skip

RELATED_PERSON: tuple[SearchParameter, ...] = (
    name_parameter(HUMAN_NAME, "RelatedPerson.name", human_names()),
    identifier_parameter("RelatedPerson", "An Identifier of the RelatedPerson"),
    telecom_parameter("RelatedPerson", "The value in any kind of contact"),
    active_parameter("RelatedPerson", "Indicates if the related person record is active"),
    indexed_parameter(ReferenceKind("patient", references("patient"), targets=("Patient",)), "reference",
                      "The patient this related person is related to", "RelatedPerson.patient", indexed=True),
)  # fmt: skip

DIRECTORY: dict[str, tuple[SearchParameter, ...]] = {
    "Patient": PATIENT,
    "Practitioner": PRACTITIONER,
    "PractitionerRole": PRACTITIONER_ROLE,
    "Organization": ORGANIZATION,
    "HealthcareService": HEALTHCARE_SERVICE,
    "CareTeam": CARE_TEAM,
    "RelatedPerson": RELATED_PERSON,
}


def register_directory(registry: SearchRegistry) -> None:
    for resource_type, parameters in DIRECTORY.items():
        for parameter in parameters:
            registry.register(resource_type, parameter)
