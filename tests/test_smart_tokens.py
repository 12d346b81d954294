"""What a SMART app's token can do, and the endpoints that inspect and end it (RFC 7662, RFC 7009)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from fhir_fax.auth.apps import Apps
from fhir_fax.auth.users import Users
from fhir_fax.fhir.models import now
from fhir_fax.settings import Settings

from helpers import serving
from smart_helpers import Flow, make_app, make_user, token_for

COMMUNICATION_READER = {
    "rule": [{"resource": "FHIR:Communication", "action": ["FHIR:Read", "FHIR:Search"], "effect": "Allow"}]
}


@pytest.fixture
async def web(settings: Settings, database: Any) -> Any:
    async with serving(settings.model_copy(update={"worker_enabled": False}), database, authenticated=False) as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_the_token_is_the_users_policy_narrowed_by_the_scopes(web: httpx.AsyncClient, database: Any) -> None:
    username = await make_user(database, COMMUNICATION_READER)
    app = await make_app(database, scopes="openid user/*.cruds")
    body = await token_for(web, Flow(app, "openid user/*.cruds"), username)
    assert body["scope"] == "openid user/Communication.rs", "what the user's policy reaches, stated exactly"
    assert (await web.get("/fhir/Communication", headers=bearer(body["access_token"]))).status_code == 200
    patients = await web.get("/fhir/Patient", headers=bearer(body["access_token"]))
    assert patients.status_code == 403, "neither the scopes nor the policy reach Patient"
    narrow = await token_for(web, Flow(app, "openid user/*.cruds"), username, keep=["openid"])
    assert narrow["scope"] == "openid", "the user left the resource scope out"
    refused = await web.get("/fhir/Communication", headers=bearer(narrow["access_token"]))
    assert refused.status_code == 403, "an identity-only token reaches nothing, whatever the policy allows"
    assert "The token's scopes () do not allow" in refused.json()["issue"][0]["diagnostics"]


async def test_a_disabled_user_or_a_deleted_app_loses_access_at_once(web: httpx.AsyncClient, database: Any) -> None:
    username = await make_user(database)
    app = await make_app(database)
    body = await token_for(web, Flow(app, "openid user/*.rs"), username)
    assert (await web.get("/fhir/Patient", headers=bearer(body["access_token"]))).status_code == 200
    await Users(database).set_disabled(username)
    disabled = await web.get("/fhir/Patient", headers=bearer(body["access_token"]))
    assert disabled.status_code == 401 and "may no longer sign in" in disabled.text
    await Users(database).set_disabled(username, False)
    await Apps(database).delete(app.client_id)
    gone = await web.get("/fhir/Patient", headers=bearer(body["access_token"]))
    assert gone.status_code == 401 and "no longer registered" in gone.text


async def test_introspection_and_revocation(web: httpx.AsyncClient, database: Any) -> None:
    username = await make_user(database, fhir_user="Practitioner/p1")
    app = await make_app(database, confidential=True)
    other = await make_app(database, confidential=True)
    body = await token_for(web, Flow(app, "openid fhirUser user/*.rs offline_access"), username)
    credentials = {"client_id": app.client_id, "client_secret": app.secret}

    access = await web.post("/oauth/introspect", data={**credentials, "token": body["access_token"]})
    assert access.status_code == 200, access.text
    facts = access.json()
    assert facts["active"] is True and facts["client_id"] == app.client_id
    assert facts["scope"] == body["scope"] and facts["fhirUser"] == "Practitioner/p1"
    refresh = await web.post("/oauth/introspect", data={**credentials, "token": body["refresh_token"]})
    assert refresh.json()["active"] is True
    not_theirs = await web.post(
        "/oauth/introspect",
        data={"client_id": other.client_id, "client_secret": other.secret, "token": body["access_token"]},
    )
    assert not_theirs.json() == {"active": False}, "an app learns nothing of another app's tokens"
    for form, error in (({**credentials}, "invalid_request"), ({"token": body["access_token"]}, "invalid_client")):
        bad = await web.post("/oauth/introspect", data=form)
        assert bad.status_code in (400, 401) and bad.json()["error"] == error

    revoked = await web.post("/oauth/revoke", data={**credentials, "token": body["refresh_token"]})
    assert revoked.status_code == 200 and revoked.json() == {}
    for token in (body["access_token"], body["refresh_token"]):
        after = await web.post("/oauth/introspect", data={**credentials, "token": token})
        assert after.json() == {"active": False}
    used = await web.get("/fhir/Patient", headers=bearer(body["access_token"]))
    assert used.status_code == 401 and "revoked" in used.text
    again = await web.post("/oauth/revoke", data={**credentials, "token": "never-issued"})
    assert again.status_code == 200, "RFC 7009: an unknown token is not an error"
    grant = await database["smart_grants"].find_one({})
    assert grant["revoked"]["reason"] == "revoked by the app (refresh_token)"


async def test_online_access_and_scope_narrowing_on_refresh(web: httpx.AsyncClient, database: Any) -> None:
    username = await make_user(database)
    app = await make_app(database)
    body = await token_for(web, Flow(app, "openid user/Patient.rs user/Communication.rs online_access"), username)
    form = {"grant_type": "refresh_token", "client_id": app.client_id, "refresh_token": body["refresh_token"]}
    narrower = await web.post("/oauth/token", data={**form, "scope": "user/Patient.rs"})
    assert narrower.status_code == 200, narrower.text
    assert narrower.json()["scope"] == "user/Patient.rs"
    wider = await web.post(
        "/oauth/token", data={**form, "refresh_token": narrower.json()["refresh_token"], "scope": "user/*.cruds"}
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    record = await database["smart_refresh_tokens"].find_one({"used": False})
    assert record is not None, "a refused refresh leaves the token usable"
    assert record["scope"] == body["scope"], "the refresh token keeps the whole grant"
    left = record["expires"] - now()
    assert timedelta(hours=7) < left <= timedelta(hours=8), "online_access: a working day, not 30 days"
    again = await web.post("/oauth/token", data={**form, "refresh_token": narrower.json()["refresh_token"]})
    assert again.status_code == 200, again.text


async def test_smart_apps_over_http(api: httpx.AsyncClient, database: Any) -> None:
    registration = {
        "name": "Chart", "type": "confidential", "redirectUris": ["https://chart.example/cb"],
        "launchUrl": "https://chart.example/launch", "scopes": ["openid", "launch", "patient/*.rs"],
    }  # fmt: skip
    created = await api.post("/v1/smart-apps", json=registration)
    assert created.status_code == 201, created.text
    assert created.json()["secret"] and created.json()["type"] == "confidential"
    listed = await api.get("/v1/smart-apps")
    # The built-in fax app (registered at start-up) comes first, then this one.
    assert [a["clientId"] for a in listed.json()] == ["fhir-fax-app", created.json()["clientId"]]
    assert all("secret" not in a and "secretHash" not in a for a in listed.json())
    for body, message in (
        ({**registration, "redirectUris": ["javascript:alert(1)"]}, "absolute http(s) URL"),
        ({**registration, "colour": "red"}, "Unknown fields: colour"),
        ({**registration, "scopes": ["system/*.everything"]}, "not a SMART scope"),
    ):
        refused = await api.post("/v1/smart-apps", json=body)
        assert refused.status_code == 400 and message in refused.json()["message"], refused.text
    assert await database["smart_apps"].count_documents({"clientId": {"$ne": "fhir-fax-app"}}) == 1
    assert (await api.delete(f"/v1/smart-apps/{created.json()['id']}")).status_code == 204
    assert (await api.delete(f"/v1/smart-apps/{created.json()['id']}")).status_code == 404


async def test_a_patient_signing_in_works_on_their_own_record(web: httpx.AsyncClient, database: Any) -> None:
    username = await make_user(database, fhir_user="Patient/maria-lopez")
    app = await make_app(database)
    body = await token_for(web, Flow(app, "openid fhirUser launch/patient patient/*.rs"), username)  # no picker
    assert body["patient"] == "maria-lopez" and body["need_patient_banner"] is True
