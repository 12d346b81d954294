"""The unmodified SMART JS client (``fhirclient`` from npm), in a page in headless Chromium, completes a standalone
launch (sign in, consent, pick a patient, read that patient's Communications) and an EHR launch.

Chromium and its driver are Debian's (``chromium``, ``chromium-driver``; ``make test`` installs them when
missing), driven by Selenium. The app is two small pages and the client's own browser build, served from
another origin than the server, so the server's CORS setting (FHIR_FAX_CORS_ORIGINS) is used as a real
deployment would use it.
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from browsers import chromium, pick_patient, sign_in_and_allow
from helpers import FHIR_JSON
from processes import FaxServer

SDK = Path(__file__).resolve().parents[2] / "node-clients" / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
USER, PASSWORD = "dr.browser", "browser password"

LAUNCH = """<!doctype html><html><head><meta charset="utf-8"><title>launch</title>
<script src="fhir-client.js"></script></head><body><p id="status">launching</p><script>
const standalone = new URLSearchParams(location.search).get("standalone");
FHIR.oauth2.authorize({
  clientId: "__CLIENT_ID__",
  scope: standalone ? "openid fhirUser launch/patient patient/*.rs" : "launch openid fhirUser patient/*.rs",
  redirectUri: "index.html",
  ...(standalone ? {iss: standalone} : {}),
}).catch(e => { document.getElementById("status").textContent = "error: " + e; });
</script></body></html>"""

INDEX = """<!doctype html><html><head><meta charset="utf-8"><title>app</title>
<script src="fhir-client.js"></script></head><body><pre id="result"></pre><script>
FHIR.oauth2.ready()
  .then(client => client.request("Communication").then(bundle => ({
      patient: client.patient.id,
      subjects: (bundle.entry || []).map(e => e.resource.subject.reference),
  })))
  .then(found => { document.getElementById("result").textContent = JSON.stringify(found); })
  .catch(e => { document.getElementById("result").textContent = JSON.stringify({error: String(e)}); });
</script></body></html>"""


@pytest.fixture
def app_site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The app's pages, served from their own origin (a thread of this test)."""
    site = tmp_path / "app"
    site.mkdir()
    shutil.copy(SDK, site / "fhir-client.js")
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{httpd.server_address[1]}", site
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path, mongo_uri: str, app_site: tuple[str, Path]) -> Iterator[FaxServer]:
    env = {
        "FHIR_FAX_MONGODB_URI": mongo_uri,
        "FHIR_FAX_DATABASE_NAME": f"smart_js_{uuid.uuid4().hex[:8]}",
        "FHIR_FAX_WORKER_ENABLED": "false",
        "FHIR_FAX_BOOTSTRAP_USER": USER,
        "FHIR_FAX_BOOTSTRAP_PASSWORD": PASSWORD,
        "FHIR_FAX_CORS_ORIGINS": json.dumps([app_site[0]]),
    }
    process = FaxServer(tmp_path / "data", "--load-fixtures", env=env)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


def result(browser: webdriver.Chrome) -> dict[str, Any]:
    wait = WebDriverWait(browser, 60)
    wait.until(lambda driver: driver.find_element(By.ID, "result").text.strip() != "")
    found: dict[str, Any] = json.loads(browser.find_element(By.ID, "result").text)
    return found


def test_the_smart_js_client_completes_a_standalone_and_an_ehr_launch(
    server: FaxServer, app_site: tuple[str, Path], browser: webdriver.Chrome
) -> None:
    app_url, site = app_site
    registered = httpx.post(
        f"{server.url}/v1/smart-apps",
        json={"name": "Fax viewer (SMART JS)", "type": "public", "redirectUris": [f"{app_url}/index.html"],
              "launchUrl": f"{app_url}/launch.html",
              "scopes": ["openid", "fhirUser", "launch", "launch/patient", "patient/*.rs"]},
        headers=server.headers,
    )  # fmt: skip
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["clientId"]
    (site / "launch.html").write_text(LAUNCH.replace("__CLIENT_ID__", client_id))
    (site / "index.html").write_text(INDEX)
    for patient in ("maria-lopez", "james-oneil"):
        body = {"resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{patient}"}}
        created = httpx.post(f"{server.url}/fhir/Communication", json=body, headers={**FHIR_JSON, **server.headers})
        assert created.status_code == 201, created.text
    fhir_base = f"{server.url}/fhir"

    # Standalone: the app knows only the FHIR base; the user signs in, consents and picks a patient.
    browser.get(f"{app_url}/launch.html?standalone={fhir_base}")
    sign_in_and_allow(browser, USER, PASSWORD)
    pick_patient(browser, "james-oneil")
    assert result(browser) == {"patient": "james-oneil", "subjects": ["Patient/james-oneil"]}

    # EHR launch: the EHR makes the context and opens the app's launch URL with iss and launch.
    launch = httpx.post(f"{server.url}/oauth/launch", json={"patient": "Patient/maria-lopez"}, headers=server.headers)
    assert launch.status_code == 200, launch.text
    browser.get(f"{app_url}/launch.html?iss={fhir_base}&launch={launch.json()['launch']}")
    sign_in_and_allow(browser, USER, PASSWORD)
    assert result(browser) == {"patient": "maria-lopez", "subjects": ["Patient/maria-lopez"]}, "no picker"
