"""The SMART authorization-code flow end to end in-process: sign-in, consent, patient, code, token, refresh."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from fhir_fax.settings import Settings

from helpers import serving
from smart_helpers import AUD, Flow, authorize, exchange, make_app, make_user, token_for

PATIENT = "maria-lopez"


@pytest.fixture
async def web(fax_settings: Settings, database: Any) -> Any:
    async with serving(fax_settings, database, authenticated=False) as http:
        yield http


async def test_a_public_app_gets_a_patient_token_with_pkce(web: httpx.AsyncClient, database: Any) -> None:
    username = await make_user(database, fhir_user="Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c")
    app = await make_app(database)
    flow = Flow(app, "openid fhirUser launch/patient patient/Communication.rs patient/Patient.r offline_access")
    answer = await authorize(web, flow, username, patient=PATIENT)
    assert answer["state"] == flow.state
    response = await exchange(web, flow, answer["code"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["patient"] == PATIENT and body["need_patient_banner"] is True
    assert body["scope"] == flow.scope
    assert body["refresh_token"] and body["expires_in"] > 0
    keys = (await web.get("/.well-known/jwks.json")).json()["keys"]
    header = jwt.get_unverified_header(body["id_token"])
    (key,) = [k for k in keys if k["kid"] == header["kid"]]
    identity = jwt.decode(
        body["id_token"], jwt.PyJWK(key).key, algorithms=["RS256"], audience=app.client_id, issuer="http://fhir.test"
    )  # signed with the published key
    assert identity["sub"] and identity["exp"] > identity["iat"]
    assert identity["fhirUser"] == f"{AUD}/Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c"
    assert jwt.get_unverified_header(body["id_token"])["alg"] == "RS256"
    web.headers["authorization"] = f"Bearer {body['access_token']}"
    assert (await web.get(f"/fhir/Patient/{PATIENT}")).status_code == 200
    searched = await web.get("/fhir/Communication")
    assert searched.status_code == 200, searched.text
    other = await web.get("/fhir/Patient/someone-else")
    assert other.status_code == 403, other.text


async def test_a_confidential_app_and_refresh_rotation(web: httpx.AsyncClient, database: Any) -> None:
    username = await make_user(database)
    app = await make_app(database, confidential=True)
    flow = Flow(app, "openid fhirUser user/*.rs offline_access", extra={"nonce": "n-0S6"})
    body = await token_for(web, flow, username)
    assert "patient" not in body
    assert jwt.decode(body["id_token"], options={"verify_signature": False})["nonce"] == "n-0S6"
    form = {"grant_type": "refresh_token", "client_id": app.client_id, "client_secret": app.secret}
    first = await web.post("/oauth/token", data={**form, "refresh_token": body["refresh_token"]})
    assert first.status_code == 200, first.text
    assert first.json()["refresh_token"] != body["refresh_token"]
    web.headers["authorization"] = f"Bearer {first.json()['access_token']}"
    assert (await web.get("/fhir/Communication")).status_code == 200
    replay = await web.post("/oauth/token", data={**form, "refresh_token": body["refresh_token"]})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    revoked = await web.get("/fhir/Communication")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["issue"][0]["diagnostics"]
    newer = await web.post("/oauth/token", data={**form, "refresh_token": first.json()["refresh_token"]})
    assert newer.status_code == 400, "the whole family is revoked"


async def test_patient_scopes_without_launch_patient_still_ask_for_a_patient(
    web: httpx.AsyncClient, database: Any
) -> None:
    username = await make_user(database)
    app = await make_app(database)
    body = await token_for(web, Flow(app, "patient/Communication.rs"), username, patient=PATIENT)
    assert body["patient"] == PATIENT and body["scope"] == "patient/Communication.rs"
