"""Constants and small helpers shared by tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SEED_MEDIA = "https://project-api.zapehr.com/v1/z3/my-bucket/path/to/document.pdf"
SEED_SENDER = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"
SEED_RECIPIENT = "Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c"
SENDER_NUMBER = "+12223334444"
MEDIA = "z3://my-bucket/path/to/document.pdf"
FHIR_JSON = {"content-type": "application/fhir+json"}


def seed_request(**changes: Any) -> dict[str, Any]:
    """The seed's own ``fax.send`` parameters, with ``changes`` applied (None removes a key)."""
    body: dict[str, Any] = {
        "media": SEED_MEDIA,
        "quality": "standard",
        "recipient": SEED_RECIPIENT,
        "sender": SEED_SENDER,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def as_parameters(body: dict[str, Any]) -> dict[str, Any]:
    """The same request as a FHIR Parameters resource."""
    value_types = {
        "media": "valueUrl",
        "quality": "valueCode",
        "sender": "valueReference",
        "recipient": "valueReference",
        "patient": "valueReference",
        "recipientNumber": "valueString",
    }
    parameters = []
    for name, value in body.items():
        kind = value_types[name]
        parameters.append({"name": name, kind: {"reference": value} if kind == "valueReference" else value})
    return {"resourceType": "Parameters", "parameter": parameters}


async def stored_counts(database: Any) -> dict[str, int]:
    """How many Communications, jobs and idempotency records exist (to prove nothing was written)."""
    return {name: await database[name].count_documents({}) for name in ("Communication", "fax_jobs", "fax_idempotency")}
