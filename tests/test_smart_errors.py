"""Bad input at the SMART endpoints: each gets the standard error, nothing is issued, and the refusal is audited.

Refusals of callers that have not signed in are counted and written when the server stops (``audit.py``), so
each test reads the audit trail after its server has stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from fhir_fax.settings import Settings

from helpers import serving
from smart_helpers import (
    PASSWORD,
    REDIRECT,
    Flow,
    authorize,
    exchange,
    hidden,
    make_app,
    make_user,
    post_form,
    query_of,
    sign_in,
)

ISSUED = ("smart_codes", "smart_refresh_tokens", "smart_grants", "smart_interactions")


async def issued(database: Any) -> dict[str, int]:
    return {name: await database[name].count_documents({}) for name in ISSUED}


async def refusals(database: Any) -> list[str]:
    events = await database["AuditEvent"].find({"subtype.code": "access-refused"}).to_list(None)
    return [event["outcomeDesc"] for event in events]


@asynccontextmanager
async def web(settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(settings.model_copy(update={"worker_enabled": False}), database, authenticated=False) as http:
        yield http


def error_page(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert "location" not in response.headers, "never sent anywhere"
    assert response.headers["content-type"].startswith("text/html")
    assert message in response.text, response.text
    assert response.headers["x-frame-options"] == "DENY"


# -- the client and redirect URI are checked first: an error page, never a redirect -----------------------


WRONG_CLIENT_OR_REDIRECT = [
    ({"redirect_uri": "https://evil.example/callback"}, "is not supported by client"),
    ({"redirect_uri": REDIRECT + "/../../evil"}, "is not supported by client"),
    ({"redirect_uri": REDIRECT + "?next=https://evil.example"}, "is not supported by client"),
    ({"redirect_uri": REDIRECT.upper()}, "is not supported by client"),
    ({"redirect_uri": None}, "Missing &#39;redirect_uri&#39;"),
    ({"client_id": "no-such-app"}, "The client does not exist"),
    ({"client_id": None}, "Missing &#39;client_id&#39;"),
    ({"state": "x" * 9000}, "too long"),
]


async def test_a_wrong_client_or_redirect_uri_shows_an_error_page(settings: Settings, database: Any) -> None:
    """Open redirects included: a redirect URI is compared whole, so no prefix, path or case trick matches."""
    app = await make_app(database)
    async with web(settings, database) as http:
        for change, message in WRONG_CLIENT_OR_REDIRECT:
            params = {**Flow(app, "openid launch/patient").params(), **change}
            response = await http.get("/oauth/authorize", params={k: v for k, v in params.items() if v is not None})
            error_page(response, 400, message)
            assert "set-cookie" not in response.headers
    assert await issued(database) == dict.fromkeys(ISSUED, 0)
    reasons = await refusals(database)
    assert any(f"authorize on App/{app.client_id} refused: invalid_request: Redirect URI" in r for r in reasons)
    assert any("authorize on App/no-such-app refused: invalid_client" in r for r in reasons)
    assert any("authorize on App/- refused: invalid_client: Missing 'client_id'" in r for r in reasons)


# -- once the app and redirect URI are known, errors go back to the app ---------------------------------


BACK_TO_THE_APP = [
    ({"state": None}, "invalid_request", "state is required"),
    ({"aud": None}, "invalid_request", "aud must be this FHIR server's base URL"),
    ({"aud": "http://other.test/fhir"}, "invalid_request", "aud must be"),
    ({"code_challenge": None, "code_challenge_method": None}, "invalid_request", "code_challenge is required"),
    ({"code_challenge_method": "plain"}, "invalid_request", "plain is not accepted"),
    ({"code_challenge_method": None}, "invalid_request", "must be S256"),
    ({"scope": "openid system/*.cruds"}, "invalid_scope", "not registered for system/*.cruds"),
    ({"scope": "openid patient/Communication.cruds"}, "invalid_scope", "patient/Communication.cruds"),
    ({"scope": None}, "invalid_scope", "scope is required"),
    ({"response_type": "token"}, "unsupported_response_type", "token"),
    ({"scope": "openid launch", "launch": "made-up"}, "invalid_request", "The launch is unknown"),
    ({"scope": "openid launch"}, "invalid_request", "needs the launch parameter"),
]


async def test_bad_authorization_requests_go_back_to_the_app_with_an_error(settings: Settings, database: Any) -> None:
    app = await make_app(database, scopes="openid launch launch/patient patient/Communication.rs")
    async with web(settings, database) as http:
        for change, error, description in BACK_TO_THE_APP:
            params = {**Flow(app, "openid").params(), **change}
            response = await http.get("/oauth/authorize", params={k: v for k, v in params.items() if v is not None})
            assert response.status_code == 302, (change, response.text)
            location = response.headers["location"]
            assert location.startswith(REDIRECT + "?")
            answer = query_of(location)
            assert answer["error"] == error and description in answer["error_description"], (change, answer)
            assert "code" not in answer
            assert answer.get("state") == params.get("state")
    assert await issued(database) == dict.fromkeys(ISSUED, 0)
    reasons = await refusals(database)
    for _, error, description in BACK_TO_THE_APP:
        assert any(f"authorize on App/{app.client_id} refused: {error}" in r and description in r for r in reasons)


# -- the forms ---------------------------------------------------------------------------------------------


async def test_sign_in_failures_are_answered_alike_and_rate_limited(settings: Settings, database: Any) -> None:
    username = await make_user(database)
    app = await make_app(database)
    limited = settings.model_copy(update={"token_failures_per_minute": 3})
    async with web(limited, database) as http:
        start = await http.get("/oauth/authorize", params=Flow(app, "openid").params())
        form = {"interaction": hidden(start.text, "interaction"), "csrf": hidden(start.text, "csrf")}
        for name, password in ((username, "wrong password"), ("nobody-at-all", PASSWORD), (username, "")):
            failed = await http.post("/oauth/authorize", data={**form, "username": name, "password": password})
            assert failed.status_code in (400, 401), failed.text
            assert "Wrong username or password." in failed.text or "Enter your username" in failed.text
        for attempt in range(3):
            failed = await http.post(
                "/oauth/authorize", data={**form, "username": username, "password": f"guess {attempt}"}
            )
        locked = await http.post("/oauth/authorize", data={**form, "username": username, "password": PASSWORD})
        assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text, "even the right password"
        assert 'name="decision"' not in locked.text
    assert (await issued(database))["smart_codes"] == 0
    reasons = await refusals(database)
    assert any(f"sign-in on User/{username} refused: wrong username or password" in r for r in reasons)
    assert any(f"sign-in on User/{username} refused: too many failed sign-ins" in r for r in reasons)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda form, http: form.pop("csrf"),
        lambda form, http: form.update(csrf="forged"),
        lambda form, http: form.update(csrf="forgé"),
        lambda form, http: http.cookies.clear(),
        lambda form, http: form.update(interaction="unknown"),
    ],
    ids=[
        "no token in the form",
        "a forged token",
        "a non-ASCII token",
        "no cookie (another site's post)",
        "no such sign-in",
    ],
)
async def test_a_form_post_without_the_csrf_token_is_refused(
    settings: Settings, database: Any, tamper: Callable[[dict[str, str], httpx.AsyncClient], Any]
) -> None:
    username = await make_user(database)
    app = await make_app(database)
    async with web(settings, database) as http:
        consent = await sign_in(http, Flow(app, "openid patient/Communication.rs").params(), username)
        form = {"interaction": hidden(consent, "interaction"), "csrf": hidden(consent, "csrf")}
        tamper(form, http)
        response = await post_form(http, [*form.items(), ("decision", "allow"), ("scope", "openid")])
        assert response.status_code in (400, 403), response.text
        assert "location" not in response.headers
        assert "CSRF token" in response.text or "expired or is already finished" in response.text
    assert (await issued(database))["smart_codes"] == 0
    reasons = await refusals(database)
    assert any("CSRF token" in r or "no open sign-in" in r for r in reasons), reasons


async def test_denying_or_leaving_out_every_scope_sends_access_denied(settings: Settings, database: Any) -> None:
    username = await make_user(database)
    app = await make_app(database)
    async with web(settings, database) as http:
        for decision in ([("decision", "deny")], [("decision", "allow")]):  # the second: every box unticked
            flow = Flow(app, "openid patient/Communication.rs")
            consent = await sign_in(http, flow.params(), username)
            assert "Read and search Communication records (of the chosen patient only)." in consent
            assert "Confirm who you are" in consent and 'name="scope" value="openid" checked' in consent
            form = [("interaction", hidden(consent, "interaction")), ("csrf", hidden(consent, "csrf"))]
            response = await post_form(http, [*form, *decision])
            assert response.status_code == 302
            answer = query_of(response.headers["location"])
            assert answer["error"] == "access_denied" and answer["state"] == flow.state and "code" not in answer
    assert (await issued(database))["smart_codes"] == 0
    reasons = await refusals(database)
    assert any("the user denied the request" in r for r in reasons)
    assert any("the user left out every scope" in r for r in reasons)


# -- the token endpoint ------------------------------------------------------------------------------------


async def test_a_code_used_twice_revokes_its_tokens(settings: Settings, database: Any) -> None:
    username = await make_user(database)
    app = await make_app(database)
    async with web(settings, database) as http:
        flow = Flow(app, "openid user/*.rs offline_access")
        code = (await authorize(http, flow, username))["code"]
        first = await exchange(http, flow, code)
        assert first.status_code == 200
        token = first.json()["access_token"]
        assert (await http.get("/fhir/Patient", headers={"authorization": f"Bearer {token}"})).status_code == 200
        again = await exchange(http, flow, code)
        assert again.status_code == 400
        assert again.json() == {
            "error": "invalid_grant",
            "error_description": "The code was already used; every token issued from it is now revoked.",
        }
        gone = await http.get("/fhir/Patient", headers={"authorization": f"Bearer {token}"})
        assert gone.status_code == 401 and "revoked" in gone.text
        refresh = {"grant_type": "refresh_token", "client_id": app.client_id}
        refused = await http.post("/oauth/token", data={**refresh, "refresh_token": first.json()["refresh_token"]})
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    grant = await database["smart_grants"].find_one({})
    assert grant["revoked"]["reason"] == "authorization code used twice"
    assert any(
        "token on App/" in r and "invalid_grant: The code was already used" in r for r in await refusals(database)
    )


BAD_EXCHANGES = [
    ({"code_verifier": None}, "invalid_request", "Missing 'code_verifier'"),
    ({"code_verifier": "x" * 50}, "invalid_grant", "Code challenge failed"),
    ({"redirect_uri": "https://app.example/other"}, "invalid_grant", "Invalid 'redirect_uri'"),
    ({"code": "made-up"}, "invalid_grant", "not one this server issued to this app"),
    ({"client_id": "another-app"}, "invalid_client", "does not exist"),
    ({"expire": "yes"}, "invalid_grant", "The code has expired"),
]


async def test_bad_code_exchanges_issue_nothing(settings: Settings, database: Any) -> None:
    username = await make_user(database)
    app = await make_app(database)
    async with web(settings, database) as http:
        for case, error, description in BAD_EXCHANGES:
            change = dict(case)
            flow = Flow(app, "openid user/*.rs offline_access")
            code = (await authorize(http, flow, username))["code"]
            if change.pop("expire", None):  # the code's 60 seconds are over
                await database["smart_codes"].update_many({}, {"$set": {"expires": await _past(database)}})
            response = await exchange(http, flow, change.pop("code", None) or code, **change)  # type: ignore[arg-type]
            assert response.status_code in (400, 401), response.text
            body = response.json()
            assert body["error"] == error and description in body["error_description"], (case, body)
            assert "access_token" not in body and response.headers["cache-control"] == "no-store"
    assert await database["smart_refresh_tokens"].count_documents({}) == 0
    assert await database["smart_grants"].count_documents({}) == 0
    reasons = await refusals(database)
    for _, error, description in BAD_EXCHANGES:
        assert any(f"refused: {error}" in r and description in r for r in reasons), description


async def _past(database: Any) -> Any:
    from datetime import timedelta

    from fhir_fax.fhir.models import now

    return now() - timedelta(seconds=1)


async def test_a_confidential_app_must_prove_itself(settings: Settings, database: Any) -> None:
    username = await make_user(database)
    app = await make_app(database, confidential=True)
    async with web(settings, database) as http:
        flow = Flow(app, "openid user/*.rs")
        code = (await authorize(http, flow, username))["code"]
        for secret in ("wrong", None):
            form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                    "code_verifier": flow.verifier, "client_id": app.client_id}  # fmt: skip
            if secret:
                form["client_secret"] = secret
            response = await http.post("/oauth/token", data=form)
            assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client", response.text
        assert (await exchange(http, flow, code)).status_code == 200, "the code was not used up by those"
    failures = await database["token_failures"].find({}).to_list(None)
    assert sum(f.get("failed", 0) for f in failures) == 2, "wrong secrets count towards the lock-out"


async def test_hostile_input_is_refused_never_a_server_error(settings: Settings, database: Any) -> None:
    app = await make_app(database, confidential=True)
    token_forms = [
        {"grant_type": "authorization_code", "code": "é", "client_id": app.client_id, "client_secret": "é"},
        {"grant_type": "authorization_code", "code": "x", "client_id": "é" * 300, "code_verifier": "é" * 50},
        {"grant_type": "refresh_token", "refresh_token": "é", "client_id": app.client_id, "client_secret": "x"},
        {"grant_type": "refresh_token", "client_id": app.client_id, "client_secret": app.secret or ""},
        {"grant_type": "authorization_code", "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:"
         "jwt-bearer", "client_assertion": "not.a.jwt", "code": "x"},
    ]  # fmt: skip
    async with web(settings, database) as http:
        for form in token_forms:
            response = await http.post("/oauth/token", data=form)
            assert 400 <= response.status_code < 500 and response.json()["error"], (form, response.text)
        for header in ("Basic !!!", "Basic " + "w6k6w6k=", "Basic Og=="):
            response = await http.post(
                "/oauth/token",
                data={"grant_type": "authorization_code", "code": "x"},
                headers={"authorization": header},
            )
            assert 400 <= response.status_code < 500, (header, response.text)
        raw = await http.post(
            "/oauth/token", content=b"grant_type=refresh_token&refresh_token=\xff\xfe",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert 400 <= raw.status_code < 500, raw.text
        for path in ("/oauth/introspect", "/oauth/revoke"):
            response = await http.post(path, data={"token": "é", "client_id": "é", "client_secret": "é"})
            assert 400 <= response.status_code < 500, (path, response.text)
        params = {**Flow(app, "openid").params(), "state": "é", "nonce": "\u0000", "scope": "openid é"}
        odd = await http.get("/oauth/authorize", params=params)
        assert odd.status_code == 400 and "may only hold printable ASCII" in odd.text, odd.text
        for name in ("redirect_uri", "response_type", "client_id", "code_challenge_method"):
            odd = await http.get("/oauth/authorize", params={**Flow(app, "openid").params(), name: 'x"é\\'})
            assert odd.status_code == 400 and "location" not in odd.headers, (name, odd.text)
        fine = await http.get("/oauth/authorize", params={**Flow(app, "openid").params(), "state": "é", "nonce": "ü"})
        assert fine.status_code == 200, "state and nonce are the app's own: anything goes back as it came"
        post = await http.post("/oauth/authorize", content=b"interaction=\xff&csrf=\xfe")
        assert post.status_code == 400, post.text
    assert await issued(database) == {**dict.fromkeys(ISSUED, 0), "smart_interactions": 1}, "only the fine one"
