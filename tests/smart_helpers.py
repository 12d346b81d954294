"""Driving the SMART authorization endpoint like a browser would: PKCE, the pages' forms, the redirect."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from fhir_fax.auth.apps import Apps
from fhir_fax.auth.users import Users

AUD = "http://fhir.test/fhir"
REDIRECT = "https://app.example/callback"
PASSWORD = "a long password"
EVERYTHING = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}
APP_SCOPES = "openid fhirUser profile launch launch/patient offline_access online_access patient/*.cruds user/*.cruds"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no {name} field in the page:\n{page[:2000]}"
    return html.unescape(found[1])


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@dataclass
class App:
    client_id: str
    secret: str | None
    record: dict[str, Any]


@dataclass
class Flow:
    """One authorization request, as an app starts it."""

    app: App
    scope: str
    verifier: str = ""
    state: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    extra: dict[str, str] = field(default_factory=dict)

    def params(self) -> dict[str, str]:
        verifier, challenge = pkce()
        self.verifier = verifier
        return {
            "response_type": "code",
            "client_id": self.app.client_id,
            "redirect_uri": REDIRECT,
            "scope": self.scope,
            "state": self.state,
            "aud": AUD,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **self.extra,
        }


async def make_user(database: Any, policy: dict[str, Any] = EVERYTHING, fhir_user: str | None = None) -> str:
    username = f"user-{uuid.uuid4().hex[:8]}"
    await Users(database).create(username, PASSWORD, policy, fhir_user=fhir_user)
    return username


async def make_app(database: Any, *, confidential: bool = False, scopes: str = APP_SCOPES) -> App:
    record, secret = await Apps(database).register(
        f"Test app {uuid.uuid4().hex[:6]}",
        redirect_uris=[REDIRECT],
        scopes=scopes,
        app_type="confidential" if confidential else "public",
        launch_url="https://app.example/launch",
    )
    return App(record["clientId"], secret, record)


async def post_form(http: httpx.AsyncClient, pairs: list[tuple[str, str]]) -> httpx.Response:
    """A form post with repeated fields (httpx's ``data`` takes a dict)."""
    headers = {"content-type": "application/x-www-form-urlencoded"}
    return await http.post("/oauth/authorize", content=urlencode(pairs), headers=headers)


async def sign_in(http: httpx.AsyncClient, params: dict[str, str], username: str, password: str = PASSWORD) -> str:
    """GET the authorization endpoint and post the sign-in form; the consent page."""
    start = await http.get("/oauth/authorize", params=params)
    assert start.status_code == 200, start.text
    form = {"interaction": hidden(start.text, "interaction"), "csrf": hidden(start.text, "csrf")}
    signed = await http.post("/oauth/authorize", data={**form, "username": username, "password": password})
    assert signed.status_code == 200, signed.text
    return signed.text


async def authorize(
    http: httpx.AsyncClient,
    flow: Flow,
    username: str,
    *,
    keep: list[str] | None = None,
    patient: str | None = None,
) -> dict[str, str]:
    """The browser's part: sign in, consent (keeping ``keep``, default all), pick ``patient``; the redirect's query."""
    params = flow.params()
    consent = await sign_in(http, params, username)
    form = {"interaction": hidden(consent, "interaction"), "csrf": hidden(consent, "csrf")}
    kept = keep if keep is not None else flow.scope.split()
    response = await post_form(http, [*form.items(), ("decision", "allow"), *(("scope", s) for s in kept)])
    if response.status_code == 200 and 'name="patient"' in response.text:
        assert patient is not None, "a patient picker was shown"
        response = await http.post("/oauth/authorize", data={**form, "patient": patient, "step": "patient"})
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?"), location
    return query_of(location)


async def exchange(http: httpx.AsyncClient, flow: Flow, code: str, **changes: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": flow.verifier,
        "client_id": flow.app.client_id,
        **changes,
    }
    if flow.app.secret:
        form["client_secret"] = flow.app.secret
    return await http.post("/oauth/token", data={k: v for k, v in form.items() if v is not None})


async def token_for(
    http: httpx.AsyncClient, flow: Flow, username: str, *, patient: str | None = None, keep: list[str] | None = None
) -> dict[str, Any]:
    answer = await authorize(http, flow, username, patient=patient, keep=keep)
    response = await exchange(http, flow, answer["code"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
