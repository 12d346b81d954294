"""The fax app's files and registration, in-process: what a start-up registers, what the setting turns off."""

from __future__ import annotations

from typing import Any

from fhir_fax import Settings
from fhir_fax.apps.fax_app import BUCKET, CLIENT_ID, CLINIC_SCOPES, FILES, REGISTERED_SCOPES, SCOPES
from fhir_fax.z3.store import BUCKETS

from helpers import serving


async def test_the_app_is_served_and_registered_on_the_base_url(settings: Settings, database: Any) -> None:
    async with serving(settings, database) as http:
        for name in ["", *FILES]:
            page = await http.get(f"/apps/fax/{name}")
            assert page.status_code == 200, name
            assert page.headers["content-type"] == FILES.get(name or "index.html")
            assert "script-src 'self';" in page.headers["content-security-policy"]
            assert page.headers["x-content-type-options"] == "nosniff"
        config = (await http.get("/apps/fax/config.json")).json()
        assert config == {"clientId": CLIENT_ID, "fhirPath": "/fhir", "projectApiPath": "/v1", "faxApiPath": "/fax/v1",
                          "bucket": BUCKET, "scopes": SCOPES, "clinicScopes": CLINIC_SCOPES}  # fmt: skip
        policy = (await http.get("/apps/fax/")).headers["content-security-policy"]
        assert "connect-src 'self' ws://fhir.test wss://fhir.test;" in policy, "its own websocket, for live status"
        for host in ("evil.example; script-src *", "a b", "x'y"):  # not a host name: named nowhere
            policy = (await http.get("/apps/fax/", headers={"host": host})).headers["content-security-policy"]
            assert "connect-src 'self';" in policy and "evil" not in policy and "ws:" not in policy
        unknown = await http.get("/apps/fax/fax_app.py")
        assert (unknown.status_code, unknown.text) == (404, "Not found")
        listed = (await http.get("/v1/smart-apps")).json()
    app = next(a for a in listed if a["clientId"] == CLIENT_ID)
    assert app["type"] == "public" and app["scopes"] == REGISTERED_SCOPES
    assert app["redirectUris"] == ["http://fhir.test/apps/fax/"] and app["launchUrl"] == "http://fhir.test/apps/fax/"
    assert await database[BUCKETS].count_documents({"_id": BUCKET}) == 1, "the bucket uploads go to"


async def test_a_later_start_moves_the_registration_to_the_new_base(settings: Settings, database: Any) -> None:
    async with serving(settings, database):
        pass
    moved = settings.model_copy(update={"base_url": "https://fax.clinic.example"})
    async with serving(moved, database) as http:
        listed = (await http.get("/v1/smart-apps")).json()
    mine = [a for a in listed if a["clientId"] == CLIENT_ID]
    assert len(mine) == 1, "refreshed, not registered twice"
    assert mine[0]["redirectUris"] == ["https://fax.clinic.example/apps/fax/"]


async def test_without_a_base_url_the_listening_address_and_localhost_are_registered(
    settings: Settings, database: Any
) -> None:
    local = settings.model_copy(update={"base_url": None, "port": 8123})
    async with serving(local, database) as http:
        listed = (await http.get("/v1/smart-apps")).json()
    app = next(a for a in listed if a["clientId"] == CLIENT_ID)
    assert app["redirectUris"] == ["http://127.0.0.1:8123/apps/fax/", "http://localhost:8123/apps/fax/"]


async def test_the_setting_turns_the_app_off(settings: Settings, database: Any) -> None:
    off = settings.model_copy(update={"fax_app_enabled": False})
    async with serving(off, database) as http:
        page = await http.get("/apps/fax/")
        listed = (await http.get("/v1/smart-apps")).json()
    assert page.status_code == 404
    assert [a for a in listed if a["clientId"] == CLIENT_ID] == []
    assert await database[BUCKETS].count_documents({"_id": BUCKET}) == 0
