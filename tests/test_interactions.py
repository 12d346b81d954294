"""Interactions not offered are 405 with Allow; formats not served are 406; server-owned resources are read-only."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fhir_fax.fhir.models import model_class

from helpers import FHIR_JSON, everything_stored

PATIENT = {"resourceType": "Patient", "name": [{"family": "Tester"}]}
JSON_PATCH = [{"op": "replace", "path": "/active", "value": True}]


def assert_405(response: httpx.Response, allow: str, message: str) -> None:
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-supported"
    assert message in outcome["issue"][0]["diagnostics"], outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("method", "path", "body", "allow", "message"),
    [
        ("PATCH", "/fhir/Patient/{id}", JSON_PATCH, "GET, PUT, DELETE", "does not support patch"),
        ("PUT", "/fhir/Patient?name=Tester", PATIENT, "GET, POST", "Conditional update"),
        ("DELETE", "/fhir/Patient?name=Tester", None, "GET, POST", "Conditional delete"),
        ("PATCH", "/fhir/Patient?name=Tester", JSON_PATCH, "GET, POST", "does not support patch"),
        ("POST", "/fhir/Patient/{id}", PATIENT, "GET, PUT, DELETE", "POST [base]/Patient/"),
        ("POST", "/fhir", {"resourceType": "Bundle", "type": "transaction"}, "", "batch/transaction"),
        ("GET", "/fhir", None, "", "system search"),
        ("GET", "/fhir/?_id=x", None, "", "system search"),
        ("GET", "/fhir/_history", None, "", "system history"),
        ("POST", "/fhir/Patient/$validate", PATIENT, "", "$validate is not offered"),
        ("POST", "/fhir/Patient/{id}/$validate", PATIENT, "", "$validate is not offered"),
        ("GET", "/fhir/Communication/$send-fax", None, "POST", "$send-fax is invoked with POST only"),
        ("PUT", "/fhir/Patient/_history", PATIENT, "GET", "PUT [base]/Patient/_history is not offered"),
        ("DELETE", "/fhir/Patient/{id}/_history/1", None, "GET", "is not offered"),
        ("POST", "/fhir/metadata", None, "GET", "is not offered"),
    ],
)
async def test_interactions_not_offered_are_405_with_allow(
    api: httpx.AsyncClient, database: Any, method: str, path: str, body: Any, allow: str, message: str
) -> None:
    created = (await api.post("/fhir/Patient", json=PATIENT, headers=FHIR_JSON)).json()
    before = await everything_stored(database)
    response = await api.request(method, path.format(id=created["id"]), json=body, headers=FHIR_JSON)
    assert_405(response, allow, message)
    assert await everything_stored(database) == before
    assert (await api.get(f"/fhir/Patient/{created['id']}")).json() == created


@pytest.mark.parametrize(
    ("headers", "params", "message"),
    [
        ({"accept": "application/fhir+xml"}, {}, "names no format this server produces"),
        ({"accept": "application/xml, text/html"}, {}, "names no format this server produces"),
        ({"accept": "application/fhir+json; fhirVersion=4.0"}, {}, "asks for FHIR version 4.0"),
        ({"accept": "application/fhir+json;fhirVersion=5.0, application/json;q=0"}, {}, "FHIR version 5.0"),
        ({}, {"_format": "xml"}, "_format=xml is not served"),
    ],
)
async def test_formats_or_versions_not_served_are_406(
    api: httpx.AsyncClient, database: Any, headers: dict[str, str], params: dict[str, str], message: str
) -> None:
    before = await everything_stored(database)
    for method, path in (("GET", "/fhir/Patient"), ("POST", "/fhir/Patient"), ("GET", "/fhir/metadata")):
        response = await api.request(method, path, params=params, json=PATIENT, headers={**FHIR_JSON, **headers})
        assert response.status_code == 406, response.text
        assert message in response.json()["issue"][0]["diagnostics"]
    assert await everything_stored(database) == before


@pytest.mark.parametrize(
    "accept",
    [
        "application/fhir+json",
        "application/fhir+json; fhirVersion=4.3",
        "application/json",
        "*/*",
        "text/html,application/xhtml+xml,*/*;q=0.8",
        "application/fhir+xml;q=0.9, application/fhir+json",
        "application/json+fhir",
    ],
)
async def test_json_accept_headers_are_served(api: httpx.AsyncClient, accept: str) -> None:
    assert (await api.get("/fhir/Patient", headers={"accept": accept})).status_code == 200
    assert (await api.get("/fhir/Patient", params={"_format": "json"})).status_code == 200


# -- server-owned resources ----------------------------------------------------------------------------


async def test_the_audit_trail_cannot_be_written_over_rest(fax_api: httpx.AsyncClient, database: Any) -> None:
    communication = (
        await fax_api.post(
            "/fhir/Communication", json={"resourceType": "Communication", "status": "completed"}, headers=FHIR_JSON
        )
    ).json()
    await fax_api.get(f"/fhir/Communication/{communication['id']}")  # audited
    event = (await fax_api.get("/fhir/AuditEvent")).json()["entry"][0]["resource"]
    forged = {**event, "outcome": "0", "outcomeDesc": "nothing happened"}
    before = await everything_stored(database)
    for method, path, body in (
        ("PUT", f"/fhir/AuditEvent/{event['id']}", forged),
        ("PATCH", f"/fhir/AuditEvent/{event['id']}", JSON_PATCH),
        ("DELETE", f"/fhir/AuditEvent/{event['id']}", None),
        ("POST", "/fhir/AuditEvent", {k: v for k, v in forged.items() if k not in ("id", "meta")}),
    ):
        response = await fax_api.request(method, path, json=body, headers=FHIR_JSON)
        assert_405(response, "GET", "AuditEvent is the server's audit trail")
    assert await everything_stored(database) == before
    assert (await fax_api.get(f"/fhir/AuditEvent/{event['id']}")).json() == event
    assert (await fax_api.get(f"/fhir/AuditEvent/{event['id']}/_history")).status_code == 200
    assert (await fax_api.post("/fhir/AuditEvent/_search", data={"_count": "1"})).status_code == 200


async def test_the_servers_operation_definition_cannot_be_changed_or_deleted(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    definition = (await fax_api.get("/fhir/OperationDefinition/send-fax")).json()
    before = await everything_stored(database)
    changed = {**definition, "parameter": []}
    for method, path, body in (
        ("PUT", "/fhir/OperationDefinition/send-fax", changed),
        ("DELETE", "/fhir/OperationDefinition/send-fax", None),
        ("POST", "/fhir/OperationDefinition", {k: v for k, v in changed.items() if k != "id"}),
        ("PUT", "/fhir/OperationDefinition/another", {**changed, "id": "another"}),
    ):
        response = await fax_api.request(method, path, json=body, headers=FHIR_JSON)
        assert_405(response, "GET", "OperationDefinition holds this server's own operations")
    assert await everything_stored(database) == before
    assert (await fax_api.get("/fhir/OperationDefinition/send-fax")).json() == definition


async def test_the_capability_statement_says_what_is_offered_and_what_is_read_only(api: httpx.AsyncClient) -> None:
    statement = (await api.get("/fhir/metadata")).json()
    model_class("CapabilityStatement").model_validate(statement)
    rest = statement["rest"][0]
    assert "interaction" not in rest, "no system-level interaction (batch, transaction, system search/history)"
    resources = {r["type"]: r for r in rest["resource"]}
    for name in ("AuditEvent", "OperationDefinition"):
        assert {i["code"] for i in resources[name]["interaction"]} == {
            "read", "vread", "history-instance", "history-type", "search-type"
        }  # fmt: skip
        assert resources[name]["documentation"].startswith("Read-only")
        assert resources[name]["conditionalCreate"] is False and resources[name]["updateCreate"] is False
    patient = resources["Patient"]
    assert {i["code"] for i in patient["interaction"]} == {
        "read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"
    }  # fmt: skip
    assert patient["conditionalUpdate"] is False and patient["conditionalDelete"] == "not-supported"
    assert "patchFormat" not in statement
    assert "405" in rest["documentation"] and "first page" in rest["documentation"]


# -- a create with a query string ----------------------------------------------------------------------


async def test_a_create_with_search_parameters_in_the_query_creates_once(api: httpx.AsyncClient, database: Any) -> None:
    identifier = [{"system": "urn:test", "value": "42"}]
    body = {"resourceType": "Communication", "status": "completed", "identifier": identifier}
    first = await api.post("/fhir/Communication", params={"identifier": "urn:test|42"}, json=body, headers=FHIR_JSON)
    second = await api.post("/fhir/Communication", params={"identifier": "urn:test|42"}, json=body, headers=FHIR_JSON)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert await database["Communication"].count_documents({}) == 1
    both = await api.post(
        "/fhir/Communication",
        params={"identifier": "urn:test|42"},
        json=body,
        headers={**FHIR_JSON, "if-none-exist": "identifier=urn:test|42"},
    )
    assert both.status_code == 400 and "Give the create condition once" in both.json()["issue"][0]["diagnostics"]
    unknown = await api.post("/fhir/Communication", params={"shoe": "9"}, json=body, headers=FHIR_JSON)
    assert unknown.status_code == 400 and "Unknown search parameter 'shoe'" in unknown.json()["issue"][0]["diagnostics"]
    assert await database["Communication"].count_documents({}) == 1


async def test_send_fax_asking_for_xml_is_406_and_sends_nothing(fax_api: httpx.AsyncClient, database: Any) -> None:
    from helpers import as_parameters, seed_request, stored_counts

    before = await stored_counts(database)
    response = await fax_api.post(
        "/fhir/Communication/$send-fax",
        json=as_parameters(seed_request()),
        headers={**FHIR_JSON, "accept": "application/fhir+xml"},
    )
    assert response.status_code == 406
    assert "names no format this server produces" in response.json()["issue"][0]["diagnostics"]
    assert await stored_counts(database) == before
