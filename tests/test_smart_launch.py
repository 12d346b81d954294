"""An EHR launch brings a patient only to the app it was made for, once, and only a patient the signed-in user may
choose: a patient user keeps to their own record, a clinician to the patients their policy lets them read."""

from __future__ import annotations

from typing import Any

import httpx

from smart_helpers import REDIRECT, Flow, exchange, hidden, make_app, make_user, post_form, query_of, sign_in

MARIA, JAMES = "maria-lopez", "james-oneil"
SCOPE = "openid launch patient/Communication.rs"


async def _launch(fax_api: httpx.AsyncClient, **body: str) -> str:
    launched = await fax_api.post("/oauth/launch", json={"patient": f"Patient/{MARIA}", **body})
    assert launched.status_code == 200, launched.text
    launch: str = launched.json()["launch"]
    return launch


async def _consent(web: httpx.AsyncClient, flow: Flow, username: str) -> httpx.Response:
    """Sign in and allow every scope: the final answer (a redirect, or a page)."""
    consent = await sign_in(web, flow.params(), username)
    form = {"interaction": hidden(consent, "interaction"), "csrf": hidden(consent, "csrf")}
    return await post_form(web, [*form.items(), ("decision", "allow"), *(("scope", s) for s in flow.scope.split())])


async def _refusals(database: Any) -> list[str]:
    events = await database["AuditEvent"].find({"subtype.code": "access-refused"}).to_list(None)
    return [event["outcomeDesc"] for event in events]


def _error(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?"), location
    answer = query_of(location)
    assert "code" not in answer, answer
    return answer


async def test_a_launch_for_another_patient_is_refused_to_a_patient_user(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    launch = await _launch(fax_api)
    username = await make_user(database, fhir_user=f"Patient/{JAMES}")
    app = await make_app(database)
    codes = await database["smart_codes"].count_documents({})
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        answer = _error(await _consent(web, Flow(app, SCOPE, extra={"launch": launch}), username))
    assert answer["error"] == "access_denied"
    assert "not your own record" in answer["error_description"]
    assert await database["smart_codes"].count_documents({}) == codes
    assert any(f"Patient/{MARIA}" in r and "not your own record" in r for r in await _refusals(database))


async def test_a_patient_user_launched_on_their_own_record_gets_it(fax_api: httpx.AsyncClient, database: Any) -> None:
    launch = await _launch(fax_api)
    username = await make_user(database, fhir_user=f"Patient/{MARIA}")
    app = await make_app(database)
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        flow = Flow(app, SCOPE, extra={"launch": launch})
        response = await _consent(web, flow, username)
        assert response.status_code == 302, response.text
        token = (await exchange(web, flow, query_of(response.headers["location"])["code"])).json()
    assert token["patient"] == MARIA


async def test_a_launch_patient_the_user_may_not_read_is_refused(fax_api: httpx.AsyncClient, database: Any) -> None:
    launch = await _launch(fax_api)
    policy = {"rule": [{"resource": f"FHIR:Patient:{JAMES}", "action": "FHIR:Read", "effect": "Allow"}]}
    username = await make_user(database, policy, fhir_user="Practitioner/p-1")
    app = await make_app(database)
    codes = await database["smart_codes"].count_documents({})
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        answer = _error(await _consent(web, Flow(app, SCOPE, extra={"launch": launch}), username))
    assert answer["error"] == "access_denied"
    assert "may not open this patient" in answer["error_description"]
    assert await database["smart_codes"].count_documents({}) == codes
    assert any("may not open this patient" in r for r in await _refusals(database))


async def test_a_launch_made_for_one_app_is_refused_to_another(fax_api: httpx.AsyncClient, database: Any) -> None:
    app, other = await make_app(database), await make_app(database)
    unknown = await fax_api.post("/oauth/launch", json={"patient": f"Patient/{MARIA}", "clientId": "no-such-app"})
    assert unknown.status_code == 404 and "no-such-app" in unknown.json()["message"], unknown.text
    launch = await _launch(fax_api, clientId=app.client_id)
    assert (await database["smart_launches"].find_one({"_id": launch}))["clientId"] == app.client_id
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        start = await web.get("/oauth/authorize", params=Flow(other, SCOPE, extra={"launch": launch}).params())
    answer = _error(start)
    assert answer["error"] == "invalid_request" and "made for another app" in answer["error_description"]


async def test_a_launch_binds_to_the_first_app_and_is_used_once(fax_api: httpx.AsyncClient, database: Any) -> None:
    launch = await _launch(fax_api)
    username = await make_user(database)
    app, other = await make_app(database), await make_app(database)
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        flow = Flow(app, SCOPE, extra={"launch": launch})
        response = await _consent(web, flow, username)
        assert response.status_code == 302 and "code=" in response.headers["location"], response.text
        token = (await exchange(web, flow, query_of(response.headers["location"])["code"])).json()
        assert token["patient"] == MARIA

        taken = _error(await web.get("/oauth/authorize", params=Flow(other, SCOPE, extra={"launch": launch}).params()))
        assert taken["error"] == "invalid_request" and "made for another app" in taken["error_description"]
        again = _error(await web.get("/oauth/authorize", params=Flow(app, SCOPE, extra={"launch": launch}).params()))
        assert again["error"] == "invalid_request" and "already used" in again["error_description"]
