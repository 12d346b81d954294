"""The fax app served by the module at /apps/fax/, in headless Chromium against a real server process.

One server (simulator at high speed) and one browser serve the module's tests; each test makes patients of its
own, so none depends on another or on a fresh database. Screenshots of each step are written to
build/screenshots/ (or ``FHIR_FAX_SCREENSHOTS``); the README shows copies of the main ones from docs/screenshots/.
"""

from __future__ import annotations

import base64
import csv
import filecmp
import io
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fpdf import FPDF
from pymongo import MongoClient
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from fhir_fax.subscriptions.queue import NOTIFICATIONS

from browsers import chromium, low_contrast, pick_patient, requests_made, sign_in_and_allow
from helpers import FHIR_JSON
from processes import FaxServer

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("FHIR_FAX_SCREENSHOTS", ROOT / "build" / "screenshots"))
VENDORED = ROOT / "fhir_fax" / "apps" / "fax" / "vendor"
NPM = ROOT / "node-clients" / "node_modules" / "fhirclient"
USER, PASSWORD = "clinic.staff", "fax app password"
SENDER = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"
GOOD, BUSY = "+16175550143", "+16175550002"
OURS = "+12223334444"  # onboarded by the server fixture: faxes are sent from it and received on it


@pytest.fixture(scope="module")
def database_name() -> str:
    return f"fax_app_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str, database_name: str) -> Iterator[FaxServer]:
    env = {
        "FHIR_FAX_MONGODB_URI": mongo_uri,
        "FHIR_FAX_DATABASE_NAME": database_name,
        "FHIR_FAX_BOOTSTRAP_USER": USER,
        "FHIR_FAX_BOOTSTRAP_PASSWORD": PASSWORD,
        "FHIR_FAX_SIMULATOR_SPEED": "1000",
        "FHIR_FAX_WORKER_POLL_SECONDS": "0.05",
        "FHIR_FAX_RETRY_DELAY_SECONDS": "0.05",
        "FHIR_FAX_MAX_ATTEMPTS": "1",
    }
    process = FaxServer(tmp_path_factory.mktemp("fax-app") / "data", "--load-fixtures", env=env)
    try:
        onboarded = httpx.post(f"{process.url}/fax/v1/onboard", json={"faxNumber": OURS},
                               headers=process.headers)  # fmt: skip
        assert onboarded.status_code == 200, onboarded.text
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two PDFs: a one-page letter and a two-page report."""
    folder = tmp_path_factory.mktemp("documents")
    made = []
    for name, pages in (("letter.pdf", 1), ("report.pdf", 2)):
        pdf = FPDF()
        pdf.set_font("Helvetica", size=24)
        for page in range(pages):
            pdf.add_page()
            pdf.cell(0, 20, f"{name} page {page + 1}")
        path = folder / name
        pdf.output(str(path))
        made.append(path)
    return made


def new_patient(server: FaxServer, family: str) -> str:
    patient_id = f"{family.lower()}-{uuid.uuid4().hex[:8]}"
    body = {"resourceType": "Patient", "id": patient_id, "name": [{"family": family, "given": ["Test"]}]}
    made = httpx.put(f"{server.url}/fhir/Patient/{patient_id}", json=body, headers={**FHIR_JSON, **server.headers})
    assert made.status_code in (200, 201), made.text
    return patient_id


def shot(browser: webdriver.Chrome, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"fax-app-{name}.png"))


def wait(browser: webdriver.Chrome, condition: Any, timeout: float = 60) -> Any:
    return WebDriverWait(browser, timeout).until(condition)


def element(browser: webdriver.Chrome, css: str) -> WebElement:
    found: WebElement = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, css) if d.find_elements(
        By.CSS_SELECTOR, css) and d.find_element(By.CSS_SELECTOR, css).is_displayed() else False)  # fmt: skip
    return found


def text_of(browser: webdriver.Chrome, element_id: str) -> str:
    value: str = browser.find_element(By.ID, element_id).text
    return value


def launch_standalone(
    server: FaxServer, browser: webdriver.Chrome, patient_id: str, kept: dict[str, str] | None = None
) -> None:
    """Open the app with no session: sign in, consent, pick the patient; the log shows. ``kept``: items put in the
    tab's sessionStorage first (test hooks)."""
    browser.get(f"{server.url}/apps/fax/config.json")
    browser.execute_script("sessionStorage.clear()")
    for key, value in (kept or {}).items():
        browser.execute_script("sessionStorage.setItem(arguments[0], arguments[1])", key, value)
    browser.get(f"{server.url}/apps/fax/")
    element(browser, "#start-patient").click()  # the start page: a patient's faxes, or the clinic view
    sign_in_and_allow(browser, USER, PASSWORD)
    pick_patient(browser, patient_id)
    element(browser, "#log-view")
    wait(browser, lambda d: "Test" in text_of(d, "patient-banner"))


def drop(browser: webdriver.Chrome, path: Path) -> None:
    """Drop ``path`` on the drop zone, as a file dragged from the desktop arrives (a DataTransfer holding it)."""
    browser.execute_script(
        """const [name, data] = arguments;
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "application/pdf"}));
        const zone = document.getElementById("drop-zone");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));""",
        path.name,
        base64.b64encode(path.read_bytes()).decode(),
    )


def good_contrast(browser: webdriver.Chrome) -> None:
    """Every visible text in the header and main has a contrast of at least 4.5:1 with what is behind it."""
    checked, low = low_contrast(browser)
    assert checked > 20 and low == []


def no_policy_violations(browser: webdriver.Chrome) -> None:
    """Nothing the pages did was blocked by the Content-Security-Policy (so nothing needs more than it allows)."""
    blocked = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert blocked == []


def log_rows(browser: webdriver.Chrome) -> list[dict[str, str]]:
    """The log's rows, read in one script (the log re-renders while faxes are in flight)."""
    rows: list[dict[str, str]] = browser.execute_script(
        "return [...document.querySelectorAll('#log-table tbody tr')]"
        ".map(r => ({id: r.dataset.id, status: r.dataset.status, text: r.innerText}))"
    )
    return rows


def send_by_api(server: FaxServer, patient_id: str, number: str = GOOD) -> str:
    body = {"media": "z3://fixtures/referral-letter.pdf", "quality": "standard", "recipientNumber": number,
            "sender": SENDER, "patient": f"Patient/{patient_id}"}  # fmt: skip
    sent = httpx.post(f"{server.url}/fax/v1/send", json=body, headers=server.headers)
    assert sent.status_code == 200, sent.text
    communication_id: str = sent.json()["communicationResource"]["id"]
    return communication_id


def live_subscriptions(server: FaxServer, patient_id: str) -> list[dict[str, Any]]:
    """The Subscriptions on the server (any status) watching this patient's faxes, as the app makes them."""
    criteria = f"Communication?patient=Patient/{patient_id}"
    found = httpx.get(f"{server.url}/fhir/Subscription", params={"criteria:exact": criteria}, headers=server.headers)
    assert found.status_code == 200, found.text
    return [e["resource"] for e in found.json().get("entry", [])]


def until(check: Any, what: str, tries: int = 300) -> Any:
    """Wait (up to about 30 s) until ``check()`` is truthy, for what another process does in its own time."""
    for _ in range(tries):
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(what)


def is_live(browser: webdriver.Chrome) -> bool:
    return browser.find_element(By.ID, "live-status").get_attribute("data-live") == "true"


def test_the_vendored_smart_client_is_the_npm_build_unmodified() -> None:
    assert filecmp.cmp(VENDORED / "fhir-client.min.js", NPM / "build" / "fhir-client.min.js", shallow=False)
    assert filecmp.cmp(VENDORED / "fhirclient-LICENSE.txt", NPM / "LICENSE", shallow=False)
    notices = "fhir-client.min.js.LICENSE.txt"
    assert filecmp.cmp(VENDORED / notices, NPM / "build" / notices, shallow=False)


def test_the_app_is_served_with_a_strict_policy_and_registered(server: FaxServer) -> None:
    page = httpx.get(f"{server.url}/apps/fax/")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    host = server.url.removeprefix("http://")
    assert f"connect-src 'self' ws://{host} wss://{host};" in policy, "requests and the websocket: this host only"
    assert "script-src 'self';" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "<script>" not in page.text and " style=" not in page.text, "no inline script or style"
    assert "http://" not in page.text and "https://" not in page.text, "no external asset"
    for name in ("fax_app.py", "..%2ffax_app.py", "vendor/../__init__.py", "vendor/fhir-client.min.js.map"):
        missing = httpx.get(f"{server.url}/apps/fax/{name}")
        assert missing.status_code == 404, name
        assert missing.text == "Not found"
    assert f"fhir-fax: the fax app is at {server.url}/apps/fax/" in server.log.read_text(), "serve says where"
    apps = httpx.get(f"{server.url}/v1/smart-apps", headers=server.headers).json()
    app = next(a for a in apps if a["clientId"] == "fhir-fax-app")
    assert app["type"] == "public"
    assert f"{server.url}/apps/fax/" in app["redirectUris"] and app["launchUrl"].endswith("/apps/fax/")


def test_send_a_packet_watch_it_deliver_then_stop_and_resend(
    server: FaxServer,
    browser: webdriver.Chrome,
    documents: list[Path],
    downloads: Path,
    mongo_uri: str,
    database_name: str,
) -> None:
    patient_id = new_patient(server, "Standalone")
    launch_standalone(server, browser, patient_id)
    assert "token" not in browser.current_url and "code=" not in browser.current_url
    # Live: the app holds an active websocket Subscription on this patient's faxes, with an end ahead.
    wait(browser, is_live)
    assert text_of(browser, "live-status") == "Live updates on"
    [subscription] = live_subscriptions(server, patient_id)
    assert subscription["status"] == "active" and subscription["channel"] == {"type": "websocket"}
    assert datetime.fromisoformat(subscription["end"]) > datetime.now(UTC)
    shot(browser, "1-log-empty")

    element(browser, "#nav-send").click()
    element(browser, "#send-view")
    browser.find_element(By.ID, "documents").send_keys(str(documents[0]))
    drop(browser, documents[1])
    wait(browser, lambda d: [s.text for s in d.find_elements(By.CSS_SELECTOR, ".upload-state")] == ["uploaded"] * 2)
    number = browser.find_element(By.ID, "recipient-number")
    number.send_keys("617")
    assert "Start with +" in text_of(browser, "recipient-number-hint"), "checked as it is typed"
    number.clear()
    number.send_keys(GOOD)
    assert text_of(browser, "recipient-number-hint") == f"Will fax {GOOD}."
    browser.find_element(By.ID, "cover-page").click()
    browser.find_element(By.ID, "cover-note").send_keys("Referral for cardiology review.")
    # The server's refusal shows next to the field it names, and nothing is sent.
    sender = Select(browser.find_element(By.ID, "sender"))
    sender.select_by_value("Organization/harbor-cardiology")
    browser.find_element(By.ID, "send-button").click()
    wait(browser, lambda d: text_of(d, "sender-error") != "")
    assert "+16175550141" in text_of(browser, "sender-error") and "not onboarded" in text_of(browser, "sender-error")
    assert text_of(browser, "send-error") == "" and text_of(browser, "recipient-error") == ""
    assert browser.find_element(By.ID, "progress").get_attribute("hidden") is not None, "nothing was sent"
    sent = httpx.get(f"{server.url}/fhir/Communication?patient=Patient/{patient_id}", headers=server.headers)
    assert sent.json().get("entry", []) == []
    sender.select_by_value(SENDER)

    # The directory: entries with a fax number, or the server's refusal in plain words.
    browser.find_element(By.ID, "directory-query").send_keys("Chen")
    browser.find_element(By.ID, "directory-search").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#directory-results li") or text_of(d, "recipient-error"))
    refusal = text_of(browser, "recipient-error")
    if refusal:  # a server without name search on the directory answers 400, said as such
        assert refusal.startswith("The directory could not be searched: ") and "name" in refusal
    else:
        assert "Amelia Chen — Practitioner — +16175550143" in text_of(browser, "directory-results")

    browser.find_element(By.ID, "preview-button").click()
    wait(browser, lambda d: text_of(d, "dry-run-pages") != "")
    assert text_of(browser, "dry-run-pages") == "4 pages will be sent.", "cover + 1 + 2"
    assert text_of(browser, "dry-run-page") == "Page 1 of 4"
    shot(browser, "2-send-preview")
    browser.find_element(By.ID, "dry-run-next").click()
    wait(browser, lambda d: text_of(d, "dry-run-page") == "Page 2 of 4")

    requests_made(browser)  # from here on: what the page asks for while the fax travels
    browser.find_element(By.ID, "send-button").click()
    wait(browser, lambda d: d.find_element(By.ID, "steps").get_attribute("data-status") == "DELIVERED")
    assert text_of(browser, "progress-status") == "Delivered"
    shot(browser, "3-send-delivered")
    # DELIVERED came through the websocket: no poll of the fax, a re-read of the log per notification, and the
    # server sent this Subscription's notifications about it, up to its current (delivered) version.
    made = requests_made(browser)
    [fax] = [e["resource"] for e in httpx.get(f"{server.url}/fhir/Communication?patient=Patient/{patient_id}",
                                              headers=server.headers).json()["entry"]]  # fmt: skip
    assert [u for m, u in made if m == "GET" and f"/fhir/Communication/{fax['id']}" in u] == [], "no poll while live"
    assert any(m == "GET" and "/fhir/Communication?patient=" in u for m, u in made), made
    assert not any(m == "WEBSOCKET" for m, _ in made), "the socket stayed bound"
    with MongoClient(mongo_uri) as mongo:
        queue = mongo[database_name][NOTIFICATIONS]
        about = {"subscription": subscription["id"], "resource": f"Communication/{fax['id']}"}
        until(lambda: queue.find_one({**about, "version": int(fax["meta"]["versionId"]), "state": "sent"}),
              "the delivered version's notification was not sent")  # fmt: skip
        assert queue.count_documents({**about, "state": "sent"}) >= 2, "queued, then each step"

    # A number that is always busy: the steps stop, with the reason.
    number.clear()
    number.send_keys(BUSY)
    browser.find_element(By.ID, "send-button").click()
    wait(browser, lambda d: d.find_element(By.ID, "steps").get_attribute("data-status") == "STOPPED")
    assert text_of(browser, "progress-status") == "Stopped: The line was busy."
    shot(browser, "4-send-stopped")
    good_contrast(browser)

    # The log (never reloaded) shows both; resend the stopped one to a good number.
    element(browser, "#nav-log").click()
    element(browser, "#log-view")
    rows = log_rows(browser)
    assert [r["status"] for r in rows] == ["STOPPED", "DELIVERED"], rows
    assert "Stopped: The line was busy." in rows[0]["text"] and "4" in rows[1]["text"].split()
    stopped = rows[0]["id"]
    browser.find_element(By.ID, f"resend-number-{stopped}").send_keys(GOOD)
    browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{stopped}"] form.resend button[type=submit]').click()
    wait(browser, lambda d: len(log_rows(d)) == 3 and log_rows(d)[0]["status"] == "DELIVERED")
    rows = log_rows(browser)
    assert "Resend of the fax sent" in rows[0]["text"]
    original = next(r for r in rows if r["id"] == stopped)
    assert "Resent" in original["text"] and ": Delivered" in original["text"]
    linked = httpx.get(f"{server.url}/fhir/Communication/{rows[0]['id']}", headers=server.headers).json()
    assert linked["partOf"] == [{"reference": f"Communication/{stopped}"}]
    shot(browser, "5-log-resent")
    good_contrast(browser)

    browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{rows[2]["id"]}"] button').click()
    wait(browser, lambda d: text_of(d, "fax-preview-page") == "Page 1 of 4")
    shot(browser, "6-log-preview")

    # The log as CSV, made in the browser: newest first, the reason of the stop, the link of the resend.
    browser.find_element(By.ID, "export-csv").click()
    csv_file = downloads / f"faxes-{patient_id}.csv"
    wait(browser, lambda d: csv_file.exists() and csv_file.read_text().count("\n") == 4)
    table = list(csv.reader(io.StringIO(csv_file.read_text())))
    assert table[0] == ["id", "sent", "status", "reason", "pages", "from", "to", "last change", "resend of"]
    assert [(r[0], r[2], r[3], r[4], r[6], r[8]) for r in table[1:]] == [
        (rows[0]["id"], "DELIVERED", "", "4", f"Fax {GOOD}", f"Communication/{stopped}"),
        (stopped, "STOPPED", "The line was busy.", "4", f"Fax {BUSY}", ""),
        (rows[2]["id"], "DELIVERED", "", "4", f"Fax {GOOD}", ""),
    ]
    no_policy_violations(browser)

    # Leaving the app removes its Subscription (nothing piles up on the server).
    browser.get(f"{server.url}/apps/fax/config.json")
    until(lambda: httpx.get(f"{server.url}/fhir/Subscription/{subscription['id']}",
                            headers=server.headers).status_code == 410, "the Subscription was not removed")  # fmt: skip
    assert live_subscriptions(server, patient_id) == []


def test_an_ehr_launch_shows_only_that_patients_faxes(server: FaxServer, browser: webdriver.Chrome) -> None:
    mine, other = new_patient(server, "Ehr"), new_patient(server, "Other")
    kept = send_by_api(server, mine)
    send_by_api(server, other)
    launch = httpx.post(f"{server.url}/oauth/launch", json={"patient": f"Patient/{mine}"}, headers=server.headers)
    assert launch.status_code == 200, launch.text
    browser.get(f"{server.url}/apps/fax/?iss={server.url}/fhir&launch={launch.json()['launch']}")
    sign_in_and_allow(browser, USER, PASSWORD)
    element(browser, "#log-view")
    wait(browser, lambda d: len(log_rows(d)) == 1 and log_rows(d)[0]["status"] == "DELIVERED")
    assert [r["id"] for r in log_rows(browser)] == [kept]
    assert "Patient: Test Ehr" in text_of(browser, "patient-banner")
    assert "launch=" not in browser.current_url and "code=" not in browser.current_url
    shot(browser, "7-ehr-launch")

    # At tablet width nothing runs off the side.
    browser.set_window_size(820, 1100)
    try:
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        element(browser, "#nav-send").click()
        element(browser, "#send-view")
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        shot(browser, "9-tablet-send")
    finally:
        browser.set_window_size(1280, 900)
    no_policy_violations(browser)


def test_a_dropped_websocket_is_reconnected_and_bound_again(server: FaxServer, browser: webdriver.Chrome) -> None:
    """The socket closes under the app: it says live updates are unavailable, then reconnects (after a second) and
    binds the same Subscription again, re-reading the log once bound."""
    patient_id = new_patient(server, "Dropped")
    kept = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": KEEP_SOCKETS})
    try:
        launch_standalone(server, browser, patient_id)
        wait(browser, is_live)
        [subscription] = live_subscriptions(server, patient_id)
        browser.execute_script(WATCH_LIVE_STATUS)
        requests_made(browser)
        browser.execute_script("window.appSockets.forEach(socket => socket.close())")
        wait(browser, lambda d: d.execute_script("return window.liveStates")[-1:] == ["Live updates on"])
        states = browser.execute_script("return window.liveStates")
        assert states[0].startswith("Live updates unavailable"), states
        made = requests_made(browser)
        assert [m for m, _ in made if m == "WEBSOCKET"] == ["WEBSOCKET"], made
        assert not any(m == "POST" and u.endswith("/fhir/Subscription") for m, u in made), "the same one, bound again"
        assert any(m == "GET" and "/fhir/Communication?patient=" in u for m, u in made), "the log re-read once bound"
        assert [s["id"] for s in live_subscriptions(server, patient_id)] == [subscription["id"]]
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", kept)


def test_the_subscription_is_renewed_before_its_end_and_none_is_left_behind(
    server: FaxServer, browser: webdriver.Chrome
) -> None:
    """With a Subscription lasting 6 s (the test hook), the app makes a fresh one and binds it before the end, deletes
    the old one, stays live throughout and is told of a new fax through the new one; leaving the page deletes it."""
    browser.get(f"{server.url}/apps/fax/config.json")
    said = browser.execute_async_script(LIVE_HARNESS)
    assert "error" not in said, said
    assert said["closedDuringCreate"] == {"live": False, "deleted": ["s1"], "sockets": 0}, said
    assert said["transient"] == {"live": False, "kept": "s2", "deleted": []}, said
    assert said["ended"] == {"live": False, "kept": None, "deleted": ["s3"]}, said
    assert said["endedAfterBound"] == {"was": True, "live": False, "kept": None, "deleted": ["s4"]}, said
    assert abs(said["lifetimeOnServerClock"] - 4 * 3600 * 1000) < 60000, "end counted on the server's clock"
    patient_id = new_patient(server, "Renewed")
    launch_standalone(server, browser, patient_id, kept={"fax-app-live-lifetime-ms": "6000"})
    wait(browser, is_live)
    browser.execute_script(WATCH_LIVE_STATUS)
    [first] = live_subscriptions(server, patient_id)
    renewed = until(
        lambda: [s for s in live_subscriptions(server, patient_id) if s["id"] != first["id"]] or None,
        "a fresh Subscription is made before the first one ends",
    )
    until(lambda: [s["id"] for s in live_subscriptions(server, patient_id)] == [renewed[0]["id"]],
          "the first Subscription is deleted once the fresh one is bound")  # fmt: skip
    end = datetime.fromisoformat(renewed[0]["end"].replace("Z", "+00:00"))
    assert end > datetime.fromisoformat(first["end"].replace("Z", "+00:00")), "a later end"
    communication_id = send_by_api(server, patient_id)
    wait(browser, lambda d: communication_id in {r["id"] for r in log_rows(d)}, timeout=30)
    assert browser.execute_script("return window.liveStates") == [], "live throughout: never said unavailable"
    assert is_live(browser)
    browser.get(f"{server.url}/apps/fax/config.json")  # leaving the page (pagehide) deletes the Subscription
    until(lambda: live_subscriptions(server, patient_id) == [], "no Subscription is left behind")


LIVE_HARNESS = """
const done = arguments[arguments.length - 1];
(async () => {
  sessionStorage.removeItem("fax-app-live-lifetime-ms");
  const { LiveFeed } = await import("/apps/fax/live.js");
  const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));
  const deleted = [], sockets = [], replies = [];
  window.fetch = async (url, init) => {
    if (init?.method === "DELETE") deleted.push(decodeURIComponent(url.split("/").pop()));
    return new Response(null, { status: 204 });
  };
  window.WebSocket = class extends EventTarget {  // the server's side of the socket, as the harness scripts it
    constructor(url) { super(); this.url = url; this.closed = false; sockets.push(this);
                       setTimeout(() => this.dispatchEvent(new Event("open"))); }
    send(text) { const reply = replies.shift(); if (reply) setTimeout(() => this.say(reply(text.split(" ")[1]))); }
    say(data) { this.dispatchEvent(new MessageEvent("message", { data })); }
    close() { if (this.closed) return; this.closed = true; setTimeout(() => this.dispatchEvent(new Event("close"))); }
  };
  const skew = 5 * 3600 * 1000;  // the server's clock runs five hours ahead of this one
  let pending = null, made = [];
  const client = {
    state: { serverUrl: "http://fhir.test/fhir", tokenResponse: { access_token: "t" } },
    async request() {
      const url = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket";
      const statement = { rest: [{ mode: "server", extension: [{ url, valueUri: "ws://fhir.test/ws" }] }] };
      const date = new Date(Date.now() + skew).toUTCString();
      return { body: statement, response: new Response(null, { headers: { Date: date } }) };
    },
    async create(resource) {
      made.push(resource);
      const lastUpdated = new Date(Date.now() + skew).toISOString();
      const stored = { ...resource, id: `s${made.length}`, meta: { lastUpdated } };
      if (pending) { const wait = pending; pending = null; await wait; }
      return stored;
    },
    async refreshIfNeeded() {},
    getAuthorizationHeader() { return "Bearer t"; },
  };
  const said = {};
  const state = (feed, n) => ({ live: feed.live, kept: feed.subscription, deleted: deleted.filter((d) => d === n) });

  // the page closes while the Subscription is being made: deleted once made, and no socket opened for it
  let release;
  pending = new Promise((resolve) => { release = resolve; });
  let feed = new LiveFeed(client, {});
  const watching = feed.watch("Communication?patient=Patient/p", () => {});
  await tick(10);
  await feed.close();
  release();
  await watching;
  await tick(10);
  said.closedDuringCreate = { live: feed.live, deleted: [...deleted], sockets: sockets.length };
  said.lifetimeOnServerClock = Date.parse(made[0].end) - (Date.now() + skew);

  // a transient refusal (the server restarting): the same Subscription is kept to bind again, nothing deleted
  feed = new LiveFeed(client, {});
  replies.push((id) => `error ${id} The server is starting or stopping; retry in a moment.`);
  await feed.watch("Communication?patient=Patient/p", () => {});
  said.transient = state(feed, "s2");
  await feed.close();

  // a definite one (ended): deleted, and a new one will be made
  feed = new LiveFeed(client, {});
  replies.push((id) => `error ${id} Subscription/${id} ended at 2020-01-01T00:00:00Z; create a new one.`);
  await feed.watch("Communication?patient=Patient/p", () => {});
  said.ended = state(feed, "s3");
  await feed.close();

  // bound, then the server says it ended and closes the socket: not live any more, and made again later
  feed = new LiveFeed(client, {});
  replies.push((id) => `bound ${id}`);
  await feed.watch("Communication?patient=Patient/p", () => {});
  const was = feed.live;
  const socket = sockets[sockets.length - 1];
  socket.say("error s4 Subscription/s4 ended at 2020-01-01T00:00:00Z; create a new one.");
  await tick(20);
  said.endedAfterBound = { was, ...state(feed, "s4") };
  await feed.close();
  done(said);
})().catch((e) => done({ error: String(e && e.stack || e) }));
"""
KEEP_SOCKETS = """
const Real = window.WebSocket;
window.appSockets = [];
window.WebSocket = class extends Real {
  constructor(url, protocols) { super(url, protocols); window.appSockets.push(this); }
};
"""
WATCH_LIVE_STATUS = """
const status = document.getElementById("live-status");
window.liveStates = [];
new MutationObserver(() => window.liveStates.push(status.textContent))
  .observe(status, {childList: true, characterData: true, subtree: true});
"""


def test_the_send_flow_by_keyboard_alone(server: FaxServer, browser: webdriver.Chrome, documents: list[Path]) -> None:
    """Also: with the websocket unreachable, the app says so and falls back to checking the fax in flight."""
    patient_id = new_patient(server, "Keyboard")
    # As behind a proxy that passes no websocket: the handshake goes to a path the server does not serve.
    unreachable = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": BLOCK_WEBSOCKET})
    try:
        launch_standalone(server, browser, patient_id)
        wait(browser, lambda d: text_of(d, "live-status").startswith("Live updates unavailable"))
        keyboard_send(server, browser, documents, patient_id)
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", unreachable)


BLOCK_WEBSOCKET = """
const Real = window.WebSocket;
window.WebSocket = class extends Real {
  constructor(url, protocols) { super(String(url).replace("/fhir/websocket", "/fhir/no-websocket"), protocols); }
};
"""


def keyboard_send(server: FaxServer, browser: webdriver.Chrome, documents: list[Path], patient_id: str) -> None:
    keys = ActionChains(browser)

    def tab_to(element_id: str, limit: int = 60, back: bool = False) -> None:
        for _ in range(limit):
            if browser.execute_script("return document.activeElement && document.activeElement.id") == element_id:
                return
            if back:
                ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
            else:
                keys.send_keys(Keys.TAB).perform()
        raise AssertionError(f"#{element_id} cannot be reached with the Tab key")

    browser.execute_script("document.activeElement && document.activeElement.blur()")
    tab_to("nav-send")
    keys.send_keys(Keys.ENTER).perform()
    element(browser, "#send-view")
    tab_to("documents")
    # The file dialog is the operating system's; Selenium fills the focused input as the dialog would.
    browser.switch_to.active_element.send_keys(str(documents[0]))
    wait(browser, lambda d: [s.text for s in d.find_elements(By.CSS_SELECTOR, ".upload-state")] == ["uploaded"])
    tab_to("recipient-number")
    keys.send_keys("+1617").perform()
    assert "7 to 15 digits" in text_of(browser, "recipient-number-hint"), "checked as it is typed"
    # Sending now is refused in the app, next to the number, and nothing reaches the server.
    tab_to("send-button")
    keys.send_keys(Keys.ENTER).perform()
    wait(browser, lambda d: text_of(d, "recipient-error") != "")
    assert text_of(browser, "recipient-error") == "An international number has 7 to 15 digits after the +."
    stored = httpx.get(f"{server.url}/fhir/Communication?patient=Patient/{patient_id}", headers=server.headers)
    assert stored.json().get("entry", []) == []
    tab_to("recipient-number", back=True)
    keys.send_keys(Keys.END).send_keys("5550143").perform()
    assert text_of(browser, "recipient-error") == "", "the error goes once the number is changed"
    assert text_of(browser, "recipient-number-hint") == f"Will fax {GOOD}."
    tab_to("cover-page")
    keys.send_keys(Keys.SPACE).perform()
    assert browser.find_element(By.ID, "cover-page").is_selected()
    tab_to("send-button")
    outline = browser.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), "the focused control shows it"
    shot(browser, "8-keyboard-focus")
    requests_made(browser)
    keys.send_keys(Keys.ENTER).perform()
    wait(browser, lambda d: d.find_element(By.ID, "steps").get_attribute("data-status") == "DELIVERED")
    assert text_of(browser, "live-status") == "Live updates unavailable: faxes in progress are checked every second."
    assert not is_live(browser)
    made = requests_made(browser)
    assert any(m == "GET" and "/fhir/Communication/" in u for m, u in made), "the fax in flight was checked"
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, "10-live-unavailable")
    no_policy_violations(browser)


def test_numbers_are_checked_as_e164_and_csv_cells_cannot_be_formulas(
    server: FaxServer, browser: webdriver.Chrome
) -> None:
    """The app's own rules (words.js), run in the browser as the app runs them."""
    browser.get(f"{server.url}/apps/fax/config.json")
    checked = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        import("/apps/fax/words.js").then(words => done({
          numbers: ["+16175550143", "+1 (617) 555-0143", "6175550143", "+0123456789", "+1617", "+1617555014312345",
                    "+1617abc", ""].map(n => [n, words.checkNumber(n).ok, words.checkNumber(n).message]),
          csv: words.toCsv([["=1+1", "+123", "-2", "@x", "plain", 'say "hi", then go']]),
        })).catch(e => done({error: String(e)}));"""
    )
    assert "error" not in checked, checked
    assert checked["numbers"] == [
        ["+16175550143", True, "Will fax +16175550143."],
        ["+1 (617) 555-0143", True, "Will fax +16175550143."],
        ["6175550143", False, "Start with + and the country code, e.g. +1 for the US."],
        ["+0123456789", False, "A country code never starts with 0."],
        ["+1617", False, "An international number has 7 to 15 digits after the +."],
        ["+1617555014312345", False, "An international number has 7 to 15 digits after the +."],
        ["+1617abc", False, "Only digits may follow the +."],
        ["", False, ""],
    ]
    assert checked["csv"] == '\'=1+1,\'+123,\'-2,\'@x,plain,"say ""hi"", then go"\r\n'


def file_received_fax(server: FaxServer, document: Path, patient_id: str) -> dict[str, Any]:
    """A fax received (the simulator's inbound door) and filed to the patient: its DocumentReference."""
    received = httpx.post(f"{server.url}/fax/v1/inbound/simulate", params={"from": "+16175550188", "to": OURS},
                          content=document.read_bytes(), headers=server.headers)  # fmt: skip
    assert received.status_code == 201, received.text
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{patient_id}"}}]}  # fmt: skip
    communication_id = received.json()["communication"]["id"]
    filed = httpx.post(f"{server.url}/fhir/Communication/{communication_id}/$file", json=body,
                       headers={**FHIR_JSON, **server.headers})  # fmt: skip
    assert filed.status_code in (200, 201), filed.text
    document_reference: dict[str, Any] = filed.json()
    return document_reference


def test_send_a_document_on_file_with_an_uploaded_one(
    server: FaxServer, browser: webdriver.Chrome, documents: list[Path]
) -> None:
    """The patient's DocumentReferences are offered in the send form; a ticked one goes after the uploaded files."""
    patient_id = new_patient(server, "Onfile")
    on_file = file_received_fax(server, documents[1], patient_id)  # two pages
    on_file_url = on_file["content"][0]["attachment"]["url"]
    attachment = {"url": "https://records.example.org/summary.pdf", "contentType": "application/pdf"}
    elsewhere = {"resourceType": "DocumentReference", "status": "current", "date": "2020-01-02T03:04:05Z",
                 "subject": {"reference": f"Patient/{patient_id}"}, "description": "Discharge summary",
                 "content": [{"attachment": attachment}]}  # fmt: skip
    made = httpx.post(f"{server.url}/fhir/DocumentReference", json=elsewhere, headers={**FHIR_JSON, **server.headers})
    assert made.status_code == 201, made.text
    launch_standalone(server, browser, patient_id)
    element(browser, "#nav-send").click()
    element(browser, "#send-view")
    element(browser, "#existing-list input[type=checkbox]")
    boxes = browser.find_elements(By.CSS_SELECTOR, "#existing-list input[type=checkbox]")
    labels = [browser.find_element(By.CSS_SELECTOR, f'label[for="{b.get_attribute("id")}"]').text for b in boxes]
    assert [b.get_attribute("value") for b in boxes] == [
        f"DocumentReference/{on_file['id']}",
        f"DocumentReference/{made.json()['id']}",
    ], "newest first"
    assert "Fax from +16175550188 (2 pages)" in labels[0] and "application/pdf" in labels[0], labels
    assert labels[1].startswith("Discharge summary — ") and labels[1].endswith("(not stored here: it cannot be faxed)")
    assert boxes[0].is_enabled() and not boxes[1].is_enabled()
    box = boxes[0]
    browser.find_element(By.ID, "send-button").click()  # nothing chosen yet: refused in the app
    wait(browser, lambda d: text_of(d, "documents-error") != "")
    assert text_of(browser, "documents-error") == "Add at least one document to fax, or tick one on file."
    box.click()
    assert text_of(browser, "documents-error") == "", "the error goes once a document is ticked"
    browser.find_element(By.ID, "documents").send_keys(str(documents[0]))  # one page
    wait(browser, lambda d: [s.text for s in d.find_elements(By.CSS_SELECTOR, ".upload-state")] == ["uploaded"])
    browser.find_element(By.ID, "recipient-number").send_keys(GOOD)
    browser.find_element(By.ID, "preview-button").click()
    wait(browser, lambda d: text_of(d, "dry-run-pages") != "")
    assert text_of(browser, "dry-run-pages") == "3 pages will be sent.", "1 uploaded + 2 on file"
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, "11-send-on-file")
    good_contrast(browser)
    browser.find_element(By.ID, "send-button").click()
    wait(browser, lambda d: d.find_element(By.ID, "steps").get_attribute("data-status") == "DELIVERED")
    found = httpx.get(f"{server.url}/fhir/Communication?patient=Patient/{patient_id}&_sort=-_lastUpdated",
                      headers=server.headers).json()  # fmt: skip
    sent = [e["resource"] for e in found["entry"] if e["resource"].get("partOf") is None and e["resource"]["id"]
            != on_file["context"]["related"][0]["reference"].split("/")[1]]  # fmt: skip
    assert len(sent) == 1, found
    urls = [p["contentAttachment"]["url"] for p in sent[0]["payload"]]
    assert len(urls) == 2 and urls[0].startswith(f"z3://fax-app/{patient_id}/") and urls[0].endswith("/letter.pdf")
    assert urls[1] == on_file_url, "the document on file, after the upload"
    assert [e["valueInteger"] for e in sent[0]["extension"] if e["url"].endswith("fax-pages")] == [3]
    no_policy_violations(browser)
