"""Validation the R4B models leave out: required bindings, the id format, JSON keys given twice."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from helpers import FHIR_JSON, everything_stored


@pytest.mark.parametrize(
    ("resource", "expression", "message"),
    [
        ({"resourceType": "Patient", "gender": "robot"}, "Patient.gender", "administrative-gender"),
        (
            {"resourceType": "Patient", "telecom": [{"system": "pigeon", "value": "x"}]},
            "Patient.telecom[0].system",
            "contact-point-system",
        ),
        ({"resourceType": "Patient", "name": [{"use": "stage"}]}, "Patient.name[0].use", "name-use"),
        (
            {"resourceType": "Patient", "contact": [{"gender": "robot"}]},
            "Patient.contact[0].gender",
            "administrative-gender",
        ),
        ({"resourceType": "Practitioner", "gender": "x"}, "Practitioner.gender", "administrative-gender"),
        ({"resourceType": "Communication", "status": "sent"}, "Communication.status", "event-status"),
        (
            {"resourceType": "Communication", "status": "completed", "priority": "whenever"},
            "Communication.priority",
            "request-priority",
        ),
        (
            {"resourceType": "Organization", "identifier": [{"use": "main", "value": "1"}]},
            "Organization.identifier[0].use",
            "identifier-use",
        ),
        (
            {
                "resourceType": "Patient",
                "text": {"status": "nice", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
            },
            "Patient.text.status",
            "narrative-status",
        ),
    ],
)
async def test_codes_outside_a_required_value_set_are_400(
    api: httpx.AsyncClient, database: Any, resource: dict[str, Any], expression: str, message: str
) -> None:
    before = await everything_stored(database)
    for method, url in (("POST", f"/fhir/{resource['resourceType']}"), ("PUT", f"/fhir/{resource['resourceType']}/x1")):
        body = {**resource, "id": "x1"} if method == "PUT" else resource
        response = await api.request(method, url, json=body, headers=FHIR_JSON)
        assert response.status_code == 400, response.text
        issue = response.json()["issue"][0]
        assert message in issue["diagnostics"] and "use one of those codes" in issue["diagnostics"]
        assert issue["expression"] == [expression]
    assert await everything_stored(database) == before


async def test_codes_in_the_value_set_are_stored(api: httpx.AsyncClient) -> None:
    patient = {
        "resourceType": "Patient",
        "gender": "unknown",
        "telecom": [{"system": "fax", "use": "work", "value": "+16175550100"}],
        "name": [{"use": "official", "family": "Lopez"}],
        "address": [{"use": "home", "type": "both"}],
        "extension": [{"url": "urn:x", "valueCode": "anything"}],
    }
    response = await api.post("/fhir/Patient", json=patient, headers=FHIR_JSON)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("bad_id", ["a" * 65, "has space", "under_score"])
async def test_ids_that_are_not_fhir_ids_are_400(api: httpx.AsyncClient, database: Any, bad_id: str) -> None:
    before = await everything_stored(database)
    response = await api.put(
        f"/fhir/Patient/{bad_id}", json={"resourceType": "Patient", "id": bad_id}, headers=FHIR_JSON
    )
    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert "Patient.id" in issue["diagnostics"]
    if len(bad_id) > 64:
        assert "is not a FHIR id: 1 to 64 letters, digits" in issue["diagnostics"]
    assert issue["expression"] == ["Patient.id"]
    assert await everything_stored(database) == before
    assert (await api.put("/fhir/Patient/" + "a" * 64, json={"resourceType": "Patient", "id": "a" * 64},
                          headers=FHIR_JSON)).status_code == 201  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"resourceType": "Patient", "gender": "male", "gender": "female"}', "gender"),
        (b'{"resourceType": "Patient", "name": [{"family": "A", "family": "B"}]}', "family"),
        (b'{"resourceType": "Patient", "resourceType": "Patient"}', "resourceType"),
    ],
)
async def test_keys_given_twice_are_400(api: httpx.AsyncClient, database: Any, raw: bytes, key: str) -> None:
    before = await everything_stored(database)
    for method, url in (("POST", "/fhir/Patient"), ("PUT", "/fhir/Patient/p1")):
        response = await api.request(method, url, content=raw, headers=FHIR_JSON)
        assert response.status_code == 400, response.text
        issue = response.json()["issue"][0]
        assert f"gives the key {key!r} twice" in issue["diagnostics"] and issue["expression"] == [key]
    assert await everything_stored(database) == before


async def test_sdk_routes_refuse_keys_given_twice_in_their_own_error_shape(fax_api: httpx.AsyncClient) -> None:
    raw = b'{"media": "z3://my-bucket/path/to/document.pdf", "quality": "fine", "quality": "standard"}'
    response = await fax_api.post("/fax/v1/send", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {
        "message": "The body gives the key 'quality' twice in one JSON object; give each key once (JSON keys must "
        "be unique, and only one of the values could be kept).",
        "code": 400,
    }
