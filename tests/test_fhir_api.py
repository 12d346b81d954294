"""FHIR REST interactions over HTTP (ASGI) against the real database: each interaction and each error."""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from fhir_fax.fhir.models import model_class

FHIR = {"content-type": "application/fhir+json"}
PATIENT = {"resourceType": "Patient", "name": [{"family": "Lopez", "given": ["Maria"]}], "gender": "female"}


async def count(database: Any, resource_type: str) -> int:
    return await database[resource_type].count_documents({})


def diagnostics(response: httpx.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert "Traceback" not in response.text
    return body["issue"][0]["diagnostics"]


async def create(api: httpx.AsyncClient, resource: dict[str, Any] = PATIENT) -> dict[str, Any]:
    response = await api.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR)
    assert response.status_code == 201, response.text
    return response.json()


# -- create ----------------------------------------------------------------------------------------


async def test_create_returns_201_with_location_etag_and_last_modified(api: httpx.AsyncClient) -> None:
    response = await api.post("/fhir/Patient", json={**PATIENT, "id": "mine"}, headers=FHIR)
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "mine" and body["meta"]["versionId"] == "1"
    assert response.headers["location"] == f"http://fhir.test/fhir/Patient/{body['id']}/_history/1"
    assert response.headers["etag"] == 'W/"1"'
    modified = parsedate_to_datetime(response.headers["last-modified"])
    assert modified.strftime("%Y-%m-%dT%H:%M:%S") == body["meta"]["lastUpdated"][:19]
    model_class("Patient").model_validate(body)


@pytest.mark.parametrize(
    ("prefer", "expect_body"),
    [
        ("return=minimal", None),
        ("return=OperationOutcome", "OperationOutcome"),
        ("return=representation", "Patient"),
    ],
)
async def test_prefer_return_shapes_the_create_response(
    api: httpx.AsyncClient, prefer: str, expect_body: str | None
) -> None:
    response = await api.post("/fhir/Patient", json=PATIENT, headers={**FHIR, "prefer": prefer})
    assert response.status_code == 201
    assert response.headers["location"].startswith("http://fhir.test/fhir/Patient/")
    if expect_body is None:
        assert response.content == b""
    else:
        assert response.json()["resourceType"] == expect_body


async def test_conditional_create_creates_once_then_returns_the_match(api: httpx.AsyncClient, database: Any) -> None:
    first = await create(api)
    condition = {**FHIR, "if-none-exist": f"_id={first['id']}"}
    again = await api.post("/fhir/Patient", json=PATIENT, headers=condition)
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    fresh = await api.post("/fhir/Patient", json=PATIENT, headers={**FHIR, "if-none-exist": "_id=nobody"})
    assert fresh.status_code == 201
    assert await count(database, "Patient") == 2


async def test_conditional_create_with_several_matches_is_412(api: httpx.AsyncClient, database: Any) -> None:
    first, second = await create(api), await create(api)
    condition = {**FHIR, "if-none-exist": f"_id={first['id']},{second['id']}"}
    response = await api.post("/fhir/Patient", json=PATIENT, headers=condition)
    assert response.status_code == 412
    assert "matches more than one Patient" in diagnostics(response)
    assert await count(database, "Patient") == 2


async def test_conditional_create_with_an_unknown_parameter_is_400(api: httpx.AsyncClient, database: Any) -> None:
    response = await api.post("/fhir/Patient", json=PATIENT, headers={**FHIR, "if-none-exist": "shoe=9"})
    assert response.status_code == 400
    assert "'shoe'" in diagnostics(response)
    assert await count(database, "Patient") == 0


# -- bad bodies: the status, the message, nothing stored ----------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "has no body"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"name": []}', 400, "has no resourceType"),
        (b'{"resourceType": "Practitioner"}', 400, "this URL takes a Patient"),
        (b'{"resourceType": "Patient", "gender": 5}', 400, "Patient.gender"),
        (b'{"resourceType": "Patient", "shoeSize": 9}', 400, "Patient.shoeSize: is not an element"),
        (b'{"resourceType": "Patient", "birthDate": "2000-13-45"}', 400, "Patient.birthDate"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ],
)
async def test_bad_bodies_are_refused_with_a_clear_outcome(
    api: httpx.AsyncClient, database: Any, body: bytes, status: int, message: str
) -> None:
    for method, url in (("POST", "/fhir/Patient"), ("PUT", "/fhir/Patient/p1")):
        response = await api.request(method, url, content=body, headers=FHIR)
        assert response.status_code == status, response.text
        assert message in diagnostics(response)
    assert await count(database, "Patient") == 0


async def test_schema_errors_name_the_element_in_expression(api: httpx.AsyncClient) -> None:
    response = await api.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": 3}]}, headers=FHIR)
    assert response.json()["issue"][0]["expression"] == ["Patient.name[0].family"]


async def test_xml_is_415_and_oversized_bodies_are_413(api: httpx.AsyncClient, database: Any) -> None:
    xml = await api.post("/fhir/Patient", content=b"<Patient/>", headers={"content-type": "application/fhir+xml"})
    assert xml.status_code == 415
    assert "application/fhir+json" in diagnostics(xml)
    huge = json.dumps({**PATIENT, "text": {"status": "generated", "div": "x" * 3_000_000}}).encode()
    big = await api.post("/fhir/Patient", content=huge, headers=FHIR)
    assert big.status_code == 413
    assert "larger than" in diagnostics(big)
    assert await count(database, "Patient") == 0


async def test_unknown_resource_type_is_404(api: httpx.AsyncClient) -> None:
    for method, url in (
        ("GET", "/fhir/Spaceship/1"),
        ("POST", "/fhir/Spaceship"),
        ("GET", "/fhir/Spaceship"),
    ):
        response = await api.request(method, url, json={"resourceType": "Spaceship"}, headers=FHIR)
        assert response.status_code == 404
        assert "'Spaceship' is not supported" in diagnostics(response)


async def test_unknown_path_under_the_fhir_base_is_an_outcome(api: httpx.AsyncClient) -> None:
    response = await api.get("/fhir/Patient/p1/_history/1/extra")
    assert response.status_code == 404
    assert "not an interaction" in diagnostics(response)


# -- read, vread, update, delete, history ------------------------------------------------------------


async def test_read_returns_the_resource_with_etag(api: httpx.AsyncClient) -> None:
    created = await create(api)
    response = await api.get(f"/fhir/Patient/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == 'W/"1"'
    missing = await api.get("/fhir/Patient/nobody")
    assert missing.status_code == 404
    assert "Patient/nobody does not exist" in diagnostics(missing)


async def test_update_versions_and_vread_reads_each(api: httpx.AsyncClient) -> None:
    created = await create(api)
    changed = {**created, "gender": "other"}
    response = await api.put(f"/fhir/Patient/{created['id']}", json=changed, headers=FHIR)
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2" and response.headers["etag"] == 'W/"2"'
    v1 = await api.get(f"/fhir/Patient/{created['id']}/_history/1")
    v2 = await api.get(f"/fhir/Patient/{created['id']}/_history/2")
    assert (v1.json()["gender"], v2.json()["gender"]) == ("female", "other")
    missing = await api.get(f"/fhir/Patient/{created['id']}/_history/3")
    assert missing.status_code == 404
    assert "has no version 3" in diagnostics(missing)


async def test_update_as_create_is_201_with_location(api: httpx.AsyncClient) -> None:
    response = await api.put("/fhir/Patient/chosen-id", json={**PATIENT, "id": "chosen-id"}, headers=FHIR)
    assert response.status_code == 201
    assert response.headers["location"] == "http://fhir.test/fhir/Patient/chosen-id/_history/1"


async def test_update_refuses_mismatched_ids_and_stale_if_match(api: httpx.AsyncClient, database: Any) -> None:
    created = await create(api)
    wrong_id = await api.put(f"/fhir/Patient/{created['id']}", json={**created, "id": "other"}, headers=FHIR)
    assert wrong_id.status_code == 400
    assert "does not match the id in the URL" in diagnostics(wrong_id)
    stale = await api.put(f"/fhir/Patient/{created['id']}", json=created, headers={**FHIR, "if-match": 'W/"5"'})
    assert stale.status_code == 412
    assert "current version is 1" in diagnostics(stale)
    garbage = await api.put(f"/fhir/Patient/{created['id']}", json=created, headers={**FHIR, "if-match": "x"})
    assert garbage.status_code == 400
    assert "If-Match" in diagnostics(garbage)
    assert (await api.get(f"/fhir/Patient/{created['id']}")).json()["meta"]["versionId"] == "1"
    assert await database["Patient_history"].count_documents({}) == 0


async def test_delete_then_read_is_410_and_history_lists_every_step(api: httpx.AsyncClient) -> None:
    created = await create(api)
    await api.put(f"/fhir/Patient/{created['id']}", json={**created, "active": True}, headers=FHIR)
    deleted = await api.delete(f"/fhir/Patient/{created['id']}")
    assert deleted.status_code == 204 and deleted.headers["etag"] == 'W/"3"'
    gone = await api.get(f"/fhir/Patient/{created['id']}")
    assert gone.status_code == 410
    assert "was deleted" in diagnostics(gone)
    assert (await api.delete(f"/fhir/Patient/{created['id']}")).status_code == 204
    assert (await api.delete("/fhir/Patient/nobody")).status_code == 404
    history = (await api.get(f"/fhir/Patient/{created['id']}/_history")).json()
    assert history["type"] == "history" and history["total"] == 3
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in history["entry"][0]
    assert history["entry"][1]["resource"]["active"] is True
    model_class("Bundle").model_validate(history)


async def test_history_of_an_unknown_resource_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/fhir/Patient/nobody/_history")
    assert response.status_code == 404
    assert "does not exist" in diagnostics(response)


# -- capabilities --------------------------------------------------------------------------------------


async def test_metadata_is_a_valid_capability_statement_of_what_is_registered(api: httpx.AsyncClient) -> None:
    response = await api.get("/fhir/metadata")
    assert response.status_code == 200
    statement = response.json()
    model_class("CapabilityStatement").model_validate(statement)
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(resources) == {
        "AuditEvent", "CareTeam", "Communication", "Device", "DocumentReference", "HealthcareService",
        "OperationDefinition", "Organization", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson",
        "Subscription", "Task",
    }  # fmt: skip
    assert {"status", "criteria", "url", "_id"} <= {p["name"] for p in resources["Subscription"]["searchParam"]}
    websocket = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"
    assert {"url": websocket, "valueUri": "ws://fhir.test/fhir/websocket"} in statement["rest"][0]["extension"]
    patient = resources["Patient"]
    assert {i["code"] for i in patient["interaction"]} >= {"read", "vread", "update", "delete", "create"}
    assert {"_id", "_lastUpdated", "_count"} <= {p["name"] for p in patient["searchParam"]}
    assert statement["fhirVersion"] == "4.3.0"
    assert statement["implementation"]["url"] == "http://fhir.test/fhir"
