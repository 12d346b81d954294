"""The one place that chooses the FHIR model classes (R4B) and turns their errors into FHIR errors."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from .conformance import check_resource
from .errors import InvalidRequest

FHIR_VERSION = "4.3.0"

# How deeply JSON objects and arrays may nest in a resource. The deepest element the supported
# types use in practice (a nested extension in an attachment of a Communication payload) is under
# 20 levels; past a few hundred, model validation and the search indexer recurse until Python
# gives up, which was a 500. The bound is checked first, without recursion.
MAX_DEPTH = 64

# Resource types this server stores. Everything else answers 404.
SUPPORTED_TYPES: tuple[str, ...] = (
    "AuditEvent",
    "CareTeam",
    "Communication",
    "Device",
    "DocumentReference",
    "HealthcareService",
    "OperationDefinition",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "RelatedPerson",
    "Subscription",
    "Task",
)


@cache
def model_class(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def is_supported(resource_type: str) -> bool:
    return resource_type in SUPPORTED_TYPES


def validate_resource(data: Any, expected_type: str) -> dict[str, Any]:
    """Validate ``data`` as an R4B ``expected_type`` and return its canonical JSON form.

    Raises InvalidRequest naming each offending element (``Patient.name[0].family``).
    """
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object holding one FHIR resource.")
    actual = data.get("resourceType")
    if actual is None:
        raise InvalidRequest(
            f'The resource has no resourceType; send a {expected_type} with "resourceType": "{expected_type}".',
            expression=["resourceType"],
        )
    if actual != expected_type:
        raise InvalidRequest(
            f"resourceType is {actual!r} but this URL takes a {expected_type}; "
            f"send it to the {actual} endpoint or fix resourceType.",
            expression=["resourceType"],
        )
    too_deep = _first_too_deep(data, expected_type)
    if too_deep is not None:
        raise InvalidRequest(
            f"{too_deep} is nested more than {MAX_DEPTH} levels deep; this server stores resources whose "
            "elements (extensions included) nest at most that deep. Flatten the nesting and send it again.",
            expression=[too_deep],
        )
    try:
        model = model_class(expected_type).model_validate(data)
    except ValidationError as error:
        raise InvalidRequest(
            describe_validation_error(expected_type, error),
            expression=[_expression(expected_type, e["loc"]) for e in error.errors()][:10],
        ) from None
    except (ValueError, TypeError) as error:  # some model validators raise plain errors
        raise InvalidRequest(f"The {expected_type} is not valid: {error}") from None
    dumped = model.model_dump(mode="json", exclude_none=True)
    check_resource(expected_type, dumped)  # required bindings and the id format, which the models leave out
    kept: dict[str, Any] = keep_lexical_forms(dumped, data)
    return kept


def _first_too_deep(data: Any, resource_type: str) -> str | None:
    """The path of the first element nested deeper than MAX_DEPTH, or None (a loop: no recursion)."""
    # Each entry: (value, depth, parent entry, step from the parent); the path is only built when needed.
    stack: list[tuple[Any, int, Any, str]] = [(data, 1, None, resource_type)]
    while stack:
        entry = stack.pop()
        value, depth = entry[0], entry[1]
        if depth > MAX_DEPTH:
            steps = []
            while entry is not None:
                steps.append(entry[3])
                entry = entry[2]
            return "".join(reversed(steps))
        if isinstance(value, dict):
            stack.extend((v, depth + 1, entry, f".{k}") for k, v in value.items() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, entry, f"[{i}]") for i, v in enumerate(value) if isinstance(v, dict | list))
    return None


def keep_lexical_forms(dumped: Any, original: Any) -> Any:
    """Put back the client's own spelling of date-times the model re-rendered.

    The models print fractional seconds with six digits (``.292000Z``); a client that sent
    ``.292Z`` should read back exactly what it wrote. Only strings that denote the same
    instant are replaced, so values are never changed, only their spelling kept.
    """
    if isinstance(dumped, dict) and isinstance(original, dict):
        for key, value in dumped.items():
            if key in original:
                dumped[key] = keep_lexical_forms(value, original[key])
        return dumped
    if isinstance(dumped, list) and isinstance(original, list) and len(dumped) == len(original):
        return [keep_lexical_forms(d, o) for d, o in zip(dumped, original, strict=True)]
    if isinstance(dumped, str) and isinstance(original, str) and dumped != original and _same_instant(dumped, original):
        return original
    return dumped


def _same_instant(a: str, b: str) -> bool:
    if "T" not in a or "T" not in b:
        return False
    try:
        return datetime.fromisoformat(a.replace("Z", "+00:00")) == datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return False


def describe_validation_error(resource_type: str, error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:10]:
        where = _expression(resource_type, item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "is not an element of this resource type; remove it or check its spelling"
        parts.append(f"{where}: {message}")
    more = len(error.errors()) - len(parts)
    if more > 0:
        parts.append(f"... and {more} more")
    return f"The {resource_type} is not valid FHIR R4B. " + "; ".join(parts)


def _expression(resource_type: str, loc: tuple[Any, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "resource_type":
            path += ".resourceType"
        else:
            path += f".{part}"
    return path


def format_instant(moment: datetime) -> str:
    """FHIR instant with millisecond precision in UTC, e.g. ``2024-11-12T10:06:35.666Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now() -> datetime:
    """Current time truncated to milliseconds, the precision MongoDB stores."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
