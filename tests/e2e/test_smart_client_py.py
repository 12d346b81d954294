"""client-py (``fhirclient`` from PyPI), unmodified, completes the SMART code flow as a confidential app.

It finds ``/oauth/authorize`` and ``/oauth/token`` in ``/metadata``'s ``oauth-uris``, sends PKCE (S256),
``aud`` and ``state``, and authenticates at the token endpoint with HTTP Basic. The browser's part (sign-in,
consent, patient picker) is played with plain HTTP requests against the pages' forms. The user is the bootstrap
user of FHIR_FAX_BOOTSTRAP_USER/_PASSWORD, as ``make run`` sets it.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fhirclient import client
from fhirclient.models.communication import Communication

from helpers import FHIR_JSON
from processes import FaxServer

REDIRECT = "https://chart.example/callback"
USER, PASSWORD = "dr.admin", "bootstrap password"


@pytest.fixture
def server(tmp_path: Path, mongo_uri: str) -> Iterator[FaxServer]:
    env = {
        "FHIR_FAX_MONGODB_URI": mongo_uri,
        "FHIR_FAX_DATABASE_NAME": f"smart_py_{uuid.uuid4().hex[:8]}",
        "FHIR_FAX_WORKER_ENABLED": "false",
        "FHIR_FAX_BOOTSTRAP_USER": USER,
        "FHIR_FAX_BOOTSTRAP_PASSWORD": PASSWORD,
    }
    process = FaxServer(tmp_path / "data", "--load-fixtures", env=env)
    try:
        yield process
    finally:
        process.stop()


def field(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, page
    return html.unescape(found[1])


def browse(url: str, base: str) -> str:
    """Sign in, allow every scope, pick Maria; the URL the browser is sent back to."""
    with httpx.Client(base_url=base, timeout=30) as browser:
        page = browser.get(url)
        assert page.status_code == 200, page.text
        form = {"interaction": field(page.text, "interaction"), "csrf": field(page.text, "csrf")}
        consent = browser.post("/oauth/authorize", data={**form, "username": USER, "password": PASSWORD})
        assert 'name="decision" value="allow"' in consent.text, consent.text
        scopes = re.findall(r'name="scope" value="([^"]*)"', consent.text)
        body = "&".join([*(f"{k}={v}" for k, v in form.items()), "decision=allow", *(f"scope={s}" for s in scopes)])
        picker = browser.post(
            "/oauth/authorize", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert 'name="patient" value="maria-lopez"' in picker.text, picker.text
        done = browser.post("/oauth/authorize", data={**form, "patient": "maria-lopez"})
        assert done.status_code == 302, done.text
        return done.headers["location"]


def test_client_py_completes_the_code_flow_as_a_confidential_app(server: FaxServer) -> None:
    registered = httpx.post(
        f"{server.url}/v1/smart-apps",
        json={"name": "Chart (client-py)", "type": "confidential", "redirectUris": [REDIRECT],
              "scopes": ["openid", "fhirUser", "launch/patient", "patient/*.rs", "offline_access"]},
        headers=server.headers,
    )  # fmt: skip
    assert registered.status_code == 201, registered.text
    app = registered.json()
    about_maria = {
        "resourceType": "Communication",
        "status": "completed",
        "subject": {"reference": "Patient/maria-lopez"},
    }
    about_james = {**about_maria, "subject": {"reference": "Patient/james-oneil"}}
    for body in (about_maria, about_james):
        created = httpx.post(f"{server.url}/fhir/Communication", json=body, headers={**FHIR_JSON, **server.headers})
        assert created.status_code == 201, created.text

    settings = {
        "app_id": app["clientId"],
        "app_secret": app["secret"],
        "api_base": f"{server.url}/fhir/",
        "redirect_uri": REDIRECT,
        "scope": "openid fhirUser launch/patient patient/*.rs offline_access",
    }
    smart = client.FHIRClient(settings=settings)
    assert smart.prepare() is False, "it found the authorization endpoint in /metadata"
    assert smart.server.auth.state["authorize_uri"] == f"{server.url}/oauth/authorize"
    url = smart.authorize_url
    assert "code_challenge_method=S256" in url
    smart.handle_callback(browse(url, server.url))
    assert smart.ready and smart.patient_id == "maria-lopez"
    assert smart.server.auth.refresh_token, "offline_access: a refresh token"
    found = list(Communication.where(struct={}).perform_resources_iter(smart.server))
    assert [c.subject.reference for c in found] == ["Patient/maria-lopez"], "only Maria's compartment"
    smart.reauthorize()  # the refresh token grant (with Basic), rotating the refresh token
    assert smart.ready
    assert list(Communication.where(struct={}).perform_resources_iter(smart.server))
