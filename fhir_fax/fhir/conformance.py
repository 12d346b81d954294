"""Checks the R4B model classes leave out: required bindings, the id format, and JSON keys given twice.

The model classes check structure and datatypes but accept any code where FHIR requires one from a fixed
value set (``Patient.gender = "robot"``) and any string as an id. A JSON parser keeps the last of two equal
keys, so ``{"gender": "male", "gender": "female"}`` would be stored as something the client may not have meant.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidRequest

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

ADMINISTRATIVE_GENDER = ("administrative-gender", ("male", "female", "other", "unknown"))
CONTACT_POINT_SYSTEM = ("contact-point-system", ("phone", "fax", "email", "pager", "url", "sms", "other"))
CONTACT_POINT_USE = ("contact-point-use", ("home", "work", "temp", "old", "mobile"))
NAME_USE = ("name-use", ("usual", "official", "temp", "nickname", "anonymous", "old", "maiden"))
ADDRESS_USE = ("address-use", ("home", "work", "temp", "old", "billing"))
ADDRESS_TYPE = ("address-type", ("postal", "physical", "both"))
IDENTIFIER_USE = ("identifier-use", ("usual", "official", "temp", "secondary", "old"))
NARRATIVE_STATUS = ("narrative-status", ("generated", "extensions", "additional", "empty"))
DAYS_OF_WEEK = ("days-of-week", ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))

# Elements of the common datatypes, wherever they appear (checked only where the element holds an object).
DATATYPE_BINDINGS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("telecom", "system"): CONTACT_POINT_SYSTEM,
    ("telecom", "use"): CONTACT_POINT_USE,
    ("name", "use"): NAME_USE,
    ("address", "use"): ADDRESS_USE,
    ("address", "type"): ADDRESS_TYPE,
    ("identifier", "use"): IDENTIFIER_USE,
}

# Required bindings of the stored types' own elements (paths without list indexes).
RESOURCE_BINDINGS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "Patient": {
        "gender": ADMINISTRATIVE_GENDER,
        "contact.gender": ADMINISTRATIVE_GENDER,
        "link.type": ("link-type", ("replaced-by", "replaces", "refer", "seealso")),
    },
    "Practitioner": {"gender": ADMINISTRATIVE_GENDER},
    "RelatedPerson": {"gender": ADMINISTRATIVE_GENDER},
    "Communication": {
        "status": (
            "event-status",
            (
                "preparation",
                "in-progress",
                "not-done",
                "on-hold",
                "stopped",
                "completed",
                "entered-in-error",
                "unknown",
            ),
        ),
        "priority": ("request-priority", ("routine", "urgent", "asap", "stat")),
    },
    "CareTeam": {"status": ("care-team-status", ("proposed", "active", "suspended", "inactive", "entered-in-error"))},
    "Device": {
        "status": ("device-status", ("active", "inactive", "entered-in-error", "unknown")),
        "deviceName.type": (
            "device-nametype",
            (
                "udi-label-name",
                "user-friendly-name",
                "patient-reported-name",
                "manufacturer-name",
                "model-name",
                "other",
            ),
        ),
    },
    "HealthcareService": {"availableTime.daysOfWeek": DAYS_OF_WEEK},
    "PractitionerRole": {"availableTime.daysOfWeek": DAYS_OF_WEEK},
    "AuditEvent": {
        "action": ("audit-event-action", ("C", "R", "U", "D", "E")),
        "outcome": ("audit-event-outcome", ("0", "4", "8", "12")),
    },
    "OperationDefinition": {
        "status": ("publication-status", ("draft", "active", "retired", "unknown")),
        "kind": ("operation-kind", ("operation", "query")),
        "parameter.use": ("operation-parameter-use", ("in", "out")),
    },
}


def check_resource(resource_type: str, data: dict[str, Any]) -> None:
    """400 for an id that is not a FHIR id or a code outside a required value set (after the model check)."""
    resource_id = data.get("id")
    if resource_id is not None and not (isinstance(resource_id, str) and ID_PATTERN.match(resource_id)):
        raise InvalidRequest(
            f"{resource_type}.id {resource_id!r} is not a FHIR id: 1 to 64 letters, digits, '-' or '.'.",
            expression=[f"{resource_type}.id"],
        )
    own = RESOURCE_BINDINGS.get(resource_type, {})
    for path, value in _leaves(data, resource_type):
        dotted = path.split(".", 1)[1] if "." in path else path
        plain = re.sub(r"\[\d+\]", "", dotted)
        parts = plain.split(".")
        binding = own.get(plain)
        if binding is None and len(parts) >= 2:
            binding = DATATYPE_BINDINGS.get((parts[-2], parts[-1]))
        if binding is None and plain == "text.status":
            binding = NARRATIVE_STATUS
        if binding is not None and isinstance(value, str) and value not in binding[1]:
            name, codes = binding
            raise InvalidRequest(
                f"{path} is {value!r}, which is not in the required value set {name} ({', '.join(codes)}); "
                "use one of those codes.",
                expression=[path],
            )


def _leaves(value: Any, path: str) -> list[tuple[str, Any]]:
    """(path, value) of every string under ``value``, skipping contained resources and extensions."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("contained", "extension", "modifierExtension", "resource"):
                continue
            found += _leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _leaves(item, f"{path}[{index}]")
    elif isinstance(value, str):
        found.append((path, value))
    return found


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: a key given twice in one object is a 400, not last-wins."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRequest(
                f"The body gives the key {key!r} twice in one JSON object; give each key once (JSON keys must be "
                "unique, and only one of the values could be kept).",
                expression=[key],
            )
        result[key] = value
    return result
