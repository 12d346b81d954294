"""Every rule of $send-fax, broken on purpose: the status, the message, and nothing stored or queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_fax.settings import Settings

from helpers import FHIR_JSON, MEDIA, SEED_RECIPIENT, as_parameters, seed_request, serving, stored_counts

NOTHING = {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}


async def refused(api: httpx.AsyncClient, door: str, body: dict[str, Any]) -> tuple[int, str]:
    """Send through one door; return the status and the error message, checking the error's shape."""
    if door == "sdk":
        response = await api.post("/fax/v1/send", json=body)
        payload = response.json()
        assert set(payload) == {"message", "code"}, payload
        assert payload["code"] == response.status_code
        assert response.headers["content-type"].startswith("application/json")
        return response.status_code, payload["message"]
    response = await api.post("/fhir/Communication/$send-fax", json=as_parameters(body), headers=FHIR_JSON)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return response.status_code, outcome["issue"][0]["diagnostics"]


CASES = [
    ("missing media", seed_request(media=None), 400, "Parameter 'media' is required"),
    ("missing quality", seed_request(quality=None), 400, "Parameter 'quality' is required"),
    ("missing sender", seed_request(sender=None), 400, "Parameter 'sender' is required"),
    ("no recipient", seed_request(recipient=None), 400, "neither was given"),
    ("both recipients", seed_request(recipientNumber="+12223334444"), 400, "not both"),
    ("bad quality", seed_request(quality="high"), 400, "quality must be one of standard, fine, superfine"),
    ("malformed sender", seed_request(sender="HealthcareService"), 400, "sender: 'HealthcareService' is not a FHIR"),
    ("sender with a space", seed_request(sender="Practitioner/a b"), 400, "is not a FHIR reference"),
    ("versioned sender", seed_request(sender="Practitioner/a/_history/1"), 400, "is not a FHIR reference"),
    ("foreign absolute sender", seed_request(sender="https://other.example/fhir/Practitioner/1"), 400, "not a FHIR"),
    ("sender type", seed_request(sender="Device/d1"), 400, "a Device cannot be the sender"),
    ("sender CareTeam", seed_request(sender="CareTeam/t1"), 400, "a CareTeam cannot be the sender"),
    ("recipient type", seed_request(recipient="Communication/c1"), 400, "a Communication cannot be the recipient"),
    ("patient type", seed_request(patient=SEED_RECIPIENT), 400, "a Practitioner cannot be the patient"),
    ("missing sender resource", seed_request(sender="HealthcareService/nope"), 422, "HealthcareService/nope does not"),
    ("missing recipient", seed_request(recipient="Practitioner/nope"), 422, "recipient: Practitioner/nope does not"),
    ("missing patient", seed_request(patient="Patient/nope"), 422, "patient: Patient/nope does not exist"),
    ("recipient lacks fax", seed_request(recipient="Patient/james-oneil"), 422, "has no current fax number"),
    (
        "sender not onboarded",
        seed_request(sender="Organization/harbor-cardiology"),
        422,
        'onboard it with POST /fax/v1/onboard {"faxNumber": "+16175550141"}',
    ),
    ("number without plus", seed_request(recipient=None, recipientNumber="12223334444"), 400, "not in E.164"),
    ("number with spaces", seed_request(recipient=None, recipientNumber="+1 222 333 4444"), 400, "not in E.164"),
    ("number with dashes", seed_request(recipient=None, recipientNumber="+1-222-333-4444"), 400, "not in E.164"),
    ("16 digits", seed_request(recipient=None, recipientNumber="+1222333444455556"), 400, "not in E.164"),
    ("leading zero", seed_request(recipient=None, recipientNumber="+0123456789"), 400, "not in E.164"),
    ("impossible length", seed_request(recipient=None, recipientNumber="+1222333"), 400, "wrong number of digits"),
    (
        "web URL",
        seed_request(media="https://evil.example/doc.pdf"),
        400,
        "media: 'https://evil.example/doc.pdf' is not",
    ),
    ("file URL", seed_request(media="file:///etc/passwd"), 400, "is not a Z3 URL of this project"),
    ("dot-dot key", seed_request(media="z3://my-bucket/a/../secret.pdf"), 400, "no valid object key"),
    ("encoded dot-dot", seed_request(media="z3://my-bucket/a/%2e%2e/secret.pdf"), 400, "no valid object key"),
    ("empty segment", seed_request(media="z3://my-bucket//doc.pdf"), 400, "no valid object key"),
    ("no key", seed_request(media="z3://my-bucket"), 400, "no valid object key"),
    ("bad bucket", seed_request(media="z3://My_Bucket/doc.pdf"), 400, "not a valid bucket name"),
    ("query string", seed_request(media="z3://my-bucket/doc.pdf?x=1"), 400, "query or fragment"),
    ("missing object", seed_request(media="z3://my-bucket/missing.pdf"), 422, "There is no Z3 object at"),
]


@pytest.mark.parametrize("door", ["sdk", "fhir"])
@pytest.mark.parametrize(("case", "body", "status", "message"), CASES, ids=[c[0] for c in CASES])
async def test_each_rule_refuses_with_a_clear_message_and_stores_nothing(
    fax_api: httpx.AsyncClient, database: Any, door: str, case: str, body: dict[str, Any], status: int, message: str
) -> None:
    got_status, got_message = await refused(fax_api, door, body)
    assert (got_status, message in got_message) == (status, True), got_message
    assert await stored_counts(database) == NOTHING


async def test_deleted_and_fax_less_resources_are_refused_distinctly(fax_api: httpx.AsyncClient, database: Any) -> None:
    no_fax = {"resourceType": "Practitioner", "telecom": [{"system": "phone", "value": "+16175550170"}]}
    bad_fax = {"resourceType": "Practitioner", "telecom": [{"system": "fax", "value": "(617) 555-0171"}]}
    gone = (await fax_api.post("/fhir/Practitioner", json=no_fax, headers=FHIR_JSON)).json()["id"]
    await fax_api.delete(f"/fhir/Practitioner/{gone}")
    broken = (await fax_api.post("/fhir/Practitioner", json=bad_fax, headers=FHIR_JSON)).json()["id"]
    ended = {
        "resourceType": "Practitioner",
        "telecom": [{"system": "fax", "value": "+16175550172", "period": {"end": "2021"}}],
    }
    old = (await fax_api.post("/fhir/Practitioner", json=ended, headers=FHIR_JSON)).json()["id"]
    for recipient, message in (
        (f"Practitioner/{gone}", "was deleted"),
        (f"Practitioner/{broken}", "is not usable: '(617) 555-0171' is not in E.164 form"),
        (f"Practitioner/{old}", "has no current fax number"),
    ):
        status, text = await refused(fax_api, "sdk", seed_request(recipient=recipient))
        assert (status, message in text) == (422, True), text
    assert await stored_counts(database) == NOTHING


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**seed_request(), "colour": "blue"}, "Unknown parameter 'colour'"),
        (seed_request(quality=5), "Parameter 'quality' must be a string"),
        (seed_request(sender=["HealthcareService/1"]), "must be a reference string"),
    ],
)
async def test_sdk_body_shape_errors(
    fax_api: httpx.AsyncClient, database: Any, body: dict[str, Any], message: str
) -> None:
    status, text = await refused(fax_api, "sdk", body)
    assert (status, message in text) == (400, True), text
    assert await stored_counts(database) == NOTHING


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ([{"name": "colour", "valueString": "blue"}], "Unknown parameter 'colour' for $send-fax"),
        ([{"name": "media", "valueString": MEDIA}], "Parameter 'media' must be given as valueUrl, not valueString"),
        ([{"name": "quality", "valueCode": "fine"}, {"name": "quality", "valueCode": "fine"}], "may appear only once"),
        ([{"name": "sender", "valueReference": {"display": "x"}}], "must be a valueReference with a 'reference'"),
    ],
)
async def test_parameters_shape_errors(
    fax_api: httpx.AsyncClient, database: Any, parameters: list[dict[str, Any]], message: str
) -> None:
    response = await fax_api.post(
        "/fhir/Communication/$send-fax", json={"resourceType": "Parameters", "parameter": parameters}, headers=FHIR_JSON
    )
    assert response.status_code == 400
    assert message in response.json()["issue"][0]["diagnostics"]
    assert await stored_counts(database) == NOTHING


@pytest.mark.parametrize(
    ("content", "door", "message"),
    [
        (b"{oops", "sdk", "not valid JSON"),
        (b"[]", "sdk", "must be a JSON object"),
        (b'{"resourceType": "Patient"}', "fhir", "this URL takes a Parameters"),
        (b"{oops", "fhir", "not valid JSON"),
    ],
)
async def test_unreadable_bodies(
    fax_api: httpx.AsyncClient, database: Any, content: bytes, door: str, message: str
) -> None:
    url = "/fax/v1/send" if door == "sdk" else "/fhir/Communication/$send-fax"
    response = await fax_api.post(url, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    body = response.json()
    assert message in (body["message"] if door == "sdk" else body["issue"][0]["diagnostics"])
    assert await stored_counts(database) == NOTHING


async def test_a_setting_can_demand_assigned_numbers(fax_settings: Settings, database: Any, tmp_path: Path) -> None:
    strict = fax_settings.model_copy(update={"require_valid_numbers": True})
    async with serving(strict, database) as api:
        # The seed's example number is possible but not assigned: refused only in strict mode.
        response = await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        assert response.status_code == 400
        assert "not an assigned number range" in response.json()["message"]
        response = await api.post(
            "/fax/v1/send", json=seed_request(recipient=None, recipientNumber="+12223334444", media=MEDIA)
        )
        assert response.status_code == 400
        assert "recipientNumber: +12223334444 is not an assigned number range" in response.json()["message"]
    assert await stored_counts(database) == NOTHING
