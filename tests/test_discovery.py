"""Discovery and scopes say exactly what is served: rest.security, the SMART configuration, granted scopes.

Also ``_elements`` and ``_summary`` on read and version read.
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from fhir_fax.auth.clients import Clients
from fhir_fax.fhir.models import model_class

from helpers import ADMIN_ID, ADMIN_SECRET, everything_stored, serving

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
TOKEN_URL = "http://fhir.test/oauth/token"
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
COMMUNICATION_READER = {
    "rule": [{"resource": "FHIR:Communication", "action": ["FHIR:Read", "FHIR:Search"], "effect": "Allow"}]
}


@pytest.fixture
async def anonymous(settings: Any, database: Any) -> Any:
    async with serving(settings, database, authenticated=False) as http:
        yield http


async def token_request(http: httpx.AsyncClient, scope: str | None, client: tuple[str, str] = (ADMIN_ID, ADMIN_SECRET)):
    form = {"grant_type": "client_credentials", "client_id": client[0], "client_secret": client[1]}
    if scope is not None:
        form["scope"] = scope
    return await http.post("/oauth/token", data=form)


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# -- finding 5: /metadata and the SMART configuration ------------------------------------------------------


async def test_metadata_declares_smart_on_fhir_with_the_token_endpoint(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/fhir/metadata")
    assert response.status_code == 200
    statement = response.json()
    model_class("CapabilityStatement").model_validate(statement)
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"] == [
        {"system": SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}
    ]
    (uris,) = [e for e in security["extension"] if e["url"] == OAUTH_URIS]
    assert uris["extension"] == [
        {"url": "authorize", "valueUri": "http://fhir.test/oauth/authorize"},
        {"url": "token", "valueUri": TOKEN_URL},
        {"url": "introspect", "valueUri": "http://fhir.test/oauth/introspect"},
        {"url": "revoke", "valueUri": "http://fhir.test/oauth/revoke"},
    ], "only the endpoints that are served (no dynamic registration)"
    config = (await anonymous.get("/fhir/.well-known/smart-configuration")).json()
    assert config["token_endpoint"] == TOKEN_URL
    assert (await token_request(anonymous, None)).status_code == 200, "the declared endpoint issues tokens"


async def test_smart_configuration_lists_only_what_is_served(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200
    config = response.json()
    assert config["grant_types_supported"] == ["authorization_code", "refresh_token", "client_credentials"]
    assert config["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ]
    assert config["response_types_supported"] == ["code"]
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["issuer"] == "http://fhir.test"
    assert set(config["capabilities"]) == {
        "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
        "client-confidential-asymmetric", "context-ehr-patient", "context-standalone-patient",
        "sso-openid-connect", "permission-offline", "permission-online", "permission-patient", "permission-user",
        "permission-v1", "permission-v2",
    }  # fmt: skip
    assert "registration_endpoint" not in config, "dynamic registration is not served"
    for name in ("authorization_endpoint", "introspection_endpoint", "revocation_endpoint"):
        method = anonymous.get if name == "authorization_endpoint" else anonymous.post
        served = await method(config[name])
        assert served.status_code in (400, 401), (name, served.status_code, "served, and it refuses an empty call")
    openid = (await anonymous.get("/.well-known/openid-configuration")).json()
    assert openid["issuer"] == config["issuer"] and openid["jwks_uri"] == config["jwks_uri"]
    assert openid["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "RS384" in config["token_endpoint_auth_signing_alg_values_supported"]
    assert (await anonymous.get("/.well-known/jwks.json")).status_code == 200, "jwks_uri is served"
    assert config["jwks_uri"] == "http://fhir.test/.well-known/jwks.json"
    for scope in [s for s in config["scopes_supported"] if s.startswith("system/")]:  # client credentials grant
        granted = await token_request(anonymous, scope)
        assert granted.status_code == 200, (scope, granted.text)
        assert granted.json()["scope"].startswith("system/"), scope


# -- finding 6: scopes granted, and stated exactly ---------------------------------------------------------


@pytest.mark.parametrize(
    "scope", ["openid", "bogus", "openid profile fhirUser launch offline_access", "patient/*.rs", "launch/patient"]
)
async def test_a_request_of_which_no_scope_is_granted_gets_no_token(
    anonymous: httpx.AsyncClient, database: Any, scope: str
) -> None:
    await token_request(anonymous, None)  # the signing key and counters exist: the refusal below adds nothing
    before = await stored_but_attempts(database)
    response = await token_request(anonymous, scope)
    assert response.status_code == 400, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"error", "error_description"}, "no token"
    assert body["error"] == "invalid_scope"
    assert f"None of the requested scopes ({scope})" in body["error_description"]
    assert "system/*.cruds" in body["error_description"], "says what this client can ask for"
    assert await stored_but_attempts(database) == before


async def stored_but_attempts(database: Any) -> tuple[dict[str, int], int]:
    """Everything stored, with the token attempts' counters as the failures they count: those are kept per
    minute, so a request in the next minute opens a new (empty) counter without counting anything."""
    stored = await everything_stored(database)
    stored.pop("token_failures", None)
    failed = sum([c.get("failed", 0) async for c in database["token_failures"].find({})])
    return stored, failed


async def test_without_a_scope_the_token_states_the_clients_whole_reach(
    anonymous: httpx.AsyncClient, database: Any
) -> None:
    admin = (await token_request(anonymous, None)).json()
    assert admin["scope"] == "system/*.cruds"
    assert claims_of(admin["access_token"])["scope"] == admin["scope"]
    record, secret = await Clients(database).create("reader", COMMUNICATION_READER)
    reader = await token_request(anonymous, None, (record["clientId"], secret))
    assert reader.status_code == 200, reader.text
    assert reader.json()["scope"] == "system/Communication.rs"
    assert claims_of(reader.json()["access_token"])["scope"] == "system/Communication.rs"


async def test_granted_scopes_are_kept_others_dropped_and_cut_to_the_policy(
    anonymous: httpx.AsyncClient, database: Any
) -> None:
    record, secret = await Clients(database).create("reader", COMMUNICATION_READER)
    response = await token_request(
        anonymous,
        "openid bogus patient/*.rs system/Communication.cruds system/Patient.rs",
        (record["clientId"], secret),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "system/Communication.rs", "Patient and the write letters are not in the policy"
    assert claims_of(body["access_token"])["scope"] == body["scope"]
    anonymous.headers["authorization"] = f"Bearer {body['access_token']}"
    assert (await anonymous.get("/fhir/Communication")).status_code == 200
    admin = await token_request(anonymous, "openid system/*.read system/Communication.c")
    assert admin.json()["scope"] == "system/*.rs system/Communication.c", "v1 read is rs; c kept for Communication"
    narrowed = await token_request(anonymous, "system/Patient.r")
    anonymous.headers["authorization"] = f"Bearer {narrowed.json()['access_token']}"
    refused = await anonymous.post("/fhir/Patient", json={"resourceType": "Patient"})
    assert refused.status_code == 403 and "The token's scopes (system/Patient.r)" in refused.text


async def test_a_scope_outside_the_policy_is_not_granted(anonymous: httpx.AsyncClient, database: Any) -> None:
    record, secret = await Clients(database).create("reader", COMMUNICATION_READER)
    response = await token_request(anonymous, "system/Patient.cruds", (record["clientId"], secret))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert "here system/Communication.rs" in response.json()["error_description"]


# -- finding 7: _elements and _summary on read --------------------------------------------------------------

PATIENT = {
    "resourceType": "Patient",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Ann Tester</div>'},
    "name": [{"family": "Tester", "given": ["Ann"]}],
    "gender": "female",
    "birthDate": "1980-02-03",
    "_birthDate": {"extension": [{"url": "http://example.org/precision", "valueString": "day"}]},
    "contact": [{"name": {"family": "Other"}}],
}


@pytest.fixture
async def api_patient(api: httpx.AsyncClient) -> tuple[httpx.AsyncClient, dict[str, Any]]:
    created = await api.post("/fhir/Patient", json=PATIENT)
    assert created.status_code == 201, created.text
    return api, created.json()


def tagged(resource: dict[str, Any]) -> bool:
    return SUBSETTED in resource["meta"].get("tag", [])


async def test_elements_on_read_and_vread(api_patient: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    api, patient = api_patient
    for path in (f"/fhir/Patient/{patient['id']}", f"/fhir/Patient/{patient['id']}/_history/1"):
        response = await api.get(path, params={"_elements": "name,birthDate"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"resourceType", "id", "meta", "name", "birthDate", "_birthDate"}, path
        assert tagged(body) and body["meta"]["versionId"] == "1"
        assert response.headers["etag"] == 'W/"1"'
    reference = {"reference": f"Patient/{patient['id']}"}
    related = await api.post("/fhir/RelatedPerson", json={"resourceType": "RelatedPerson", "patient": reference})
    subset = (await api.get(f"/fhir/RelatedPerson/{related.json()['id']}", params={"_elements": "name"})).json()
    assert subset["patient"] == reference, "mandatory elements are always kept"


async def test_summary_on_read(api_patient: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    api, patient = api_patient
    path = f"/fhir/Patient/{patient['id']}"
    summary = (await api.get(path, params={"_summary": "true"})).json()
    assert {"name", "gender", "birthDate"} <= set(summary) and tagged(summary)
    assert "text" not in summary and "contact" not in summary, "not summary elements"
    text = (await api.get(path, params={"_summary": "text"})).json()
    assert set(text) == {"resourceType", "id", "meta", "text"} and tagged(text)
    data = (await api.get(path, params={"_summary": "data"})).json()
    assert "text" not in data and {"contact", "_birthDate"} <= set(data) and tagged(data)
    whole = (await api.get(path, params={"_summary": "false"})).json()
    assert whole == (await api.get(path)).json() and not tagged(whole)
    vread = (await api.get(f"{path}/_history/1", params={"_summary": "text"})).json()
    assert set(vread) == {"resourceType", "id", "meta", "text"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"_summary": "count"}, "_summary=count counts the matches of a search"),
        ({"_summary": "short"}, "_summary='short' is not one of true, text, data, count, false"),
        ({"_elements": "name,colour"}, "_elements names colour, which Patient does not have"),
        ({"_elements": ","}, "_elements is empty"),
        ({"_elements": "name", "_summary": "true"}, "_elements and _summary are both given"),
        ([("_elements", "name"), ("_elements", "gender")], "_elements is given 2 times"),
    ],
)
async def test_bad_read_shapes_are_400(
    api_patient: tuple[httpx.AsyncClient, dict[str, Any]], database: Any, params: Any, message: str
) -> None:
    api, patient = api_patient
    before = await everything_stored(database)
    for path in (f"/fhir/Patient/{patient['id']}", f"/fhir/Patient/{patient['id']}/_history/1"):
        response = await api.get(path, params=params)
        assert response.status_code == 400, response.text
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert message in outcome["issue"][0]["diagnostics"]
    assert await everything_stored(database) == before, "nothing read, nothing audited"
