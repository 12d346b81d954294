"""The ``$send-fax`` OperationDefinition and the two parsers that read their inputs from it.

Both doors (FHIR ``Parameters`` and the SDK's JSON) are parsed from this one definition:
parameter names, value types, cardinality and allowed reference targets, so what
``/metadata`` advertises and what the server accepts cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from ..fhir.errors import InvalidRequest
from ..fhir.models import validate_resource
from .terminology import QUALITIES, RECIPIENT_TYPES, SENDER_TYPES

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
            "max": "1",
            "type": "url",
            "documentation": "Z3 URL of the document: z3://{bucket}/{key} or {base}/v1/z3/{bucket}/{key}.",
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
        {"name": "return", "use": "out", "min": 1, "max": "1", "type": "Communication"},
    ],
}

IN_PARAMETERS: dict[str, dict[str, Any]] = {p["name"]: p for p in SEND_FAX_DEFINITION["parameter"] if p["use"] == "in"}


def allowed_types(parameter: str) -> tuple[str, ...]:
    """Resource types a Reference parameter may point to, as the definition says."""
    return tuple(profile.removeprefix(PROFILE) for profile in IN_PARAMETERS[parameter].get("targetProfile", []))


@dataclass(frozen=True)
class SendFaxRequest:
    """The inputs of one send, as plain strings, whichever door they came through."""

    media: str
    quality: str
    sender: str
    recipient: str | None = None
    recipientNumber: str | None = None
    patient: str | None = None

    def fingerprint(self) -> str:
        """Stable hash of the inputs: a repeated idempotency key must come with the same request."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def _value_key(parameter: dict[str, Any]) -> str:
    kind = parameter["type"]
    return "value" + kind[0].upper() + kind[1:]


def _build(values: dict[str, str]) -> SendFaxRequest:
    for name, parameter in IN_PARAMETERS.items():
        if parameter["min"] >= 1 and not values.get(name):
            raise InvalidRequest(f"Parameter '{name}' is required: {parameter['documentation']}", expression=[name])
    return SendFaxRequest(**values)


def parse_parameters(body: Any) -> SendFaxRequest:
    """Inputs from a FHIR ``Parameters`` resource, checked against the definition."""
    parameters = validate_resource(body, "Parameters")
    values: dict[str, str] = {}
    for item in parameters.get("parameter", []):
        name = item.get("name")
        definition = IN_PARAMETERS.get(name)
        if definition is None:
            known = ", ".join(IN_PARAMETERS)
            raise InvalidRequest(f"Unknown parameter {name!r} for $send-fax; known: {known}.", expression=[name])
        if name in values:
            raise InvalidRequest(f"Parameter '{name}' may appear only once.", expression=[name])
        key = _value_key(definition)
        present = [k for k in item if k.startswith("value") or k in ("resource", "part")]
        if present != [key]:
            raise InvalidRequest(
                f"Parameter '{name}' must be given as {key}" + (f", not {', '.join(present)}" if present else "") + ".",
                expression=[name],
            )
        value = item[key]
        if definition["type"] == "Reference":
            value = value.get("reference")
            if not isinstance(value, str):
                raise InvalidRequest(
                    f"Parameter '{name}' must be a valueReference with a 'reference' such as 'Practitioner/123'.",
                    expression=[name],
                )
        values[name] = value
    return _build(values)


def parse_sdk_body(body: Any) -> SendFaxRequest:
    """Inputs from the SDK's JSON body (``{"media": ..., "quality": ..., ...}``)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object with media, quality, sender and recipient.")
    values: dict[str, str] = {}
    for name, value in body.items():
        definition = IN_PARAMETERS.get(name)
        if definition is None:
            known = ", ".join(IN_PARAMETERS)
            raise InvalidRequest(f"Unknown parameter {name!r}; known: {known}.", expression=[name])
        if value is None:
            continue
        if definition["type"] == "Reference" and isinstance(value, dict):
            value = value.get("reference")
        if not isinstance(value, str):
            shape = "a reference string such as 'Practitioner/123'" if definition["type"] == "Reference" else "a string"
            raise InvalidRequest(f"Parameter '{name}' must be {shape}.", expression=[name])
        values[name] = value
    return _build(values)
