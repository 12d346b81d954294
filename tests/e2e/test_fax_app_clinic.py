"""The fax app's clinic view (no patient, user scopes): the inbox of received faxes and the outbox of sent ones, in
headless Chromium against a real server process.

One server and one browser serve the module; each test signs in afresh and makes patients, callers and faxes of its
own, so none depends on another or on a fresh database. Received faxes come from the command line (as a clinic's
carrier would deliver them, into the running server's database) or the simulator endpoint. Screenshots go to
build/screenshots/ (or ``FHIR_FAX_SCREENSHOTS``) as ``fax-app-clinic-*.png``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fpdf import FPDF
from pymongo import AsyncMongoClient, MongoClient
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from fhir_fax.auth.users import Users
from fhir_fax.fax.terminology import SUGGESTION_CONFIDENCE_EXTENSION as CONFIDENCE_EXTENSION
from fhir_fax.fax.terminology import SUGGESTION_EVIDENCE_EXTENSION as EVIDENCE_EXTENSION
from fhir_fax.subscriptions.queue import NOTIFICATIONS

from browsers import (
    chromium,
    csp_violations,
    fits_width,
    low_contrast,
    pick_patient,
    shown,
    sign_in_and_allow,
    tab_to,
    text_by_id,
    wait_for,
)
from helpers import FHIR_JSON
from processes import CLI, FaxServer

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("FHIR_FAX_SCREENSHOTS", ROOT / "build" / "screenshots"))
USER, PASSWORD = "clinic.staff", "fax app password"
OUR_NUMBER, HARBOR_NUMBER = "+12223334444", "+16175550141"  # the HealthcareService's line; Harbor Cardiology's
SENDER, HARBOR = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964", "Organization/harbor-cardiology"
GOOD, BUSY = "+16175550143", "+16175550002"


@pytest.fixture(scope="module")
def database_name() -> str:
    return f"fax_clinic_{uuid.uuid4().hex[:8]}"


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
    process = FaxServer(tmp_path_factory.mktemp("fax-clinic") / "data", "--load-fixtures", env=env)
    try:
        for number in (OUR_NUMBER, HARBOR_NUMBER):
            onboarded = httpx.post(f"{process.url}/fax/v1/onboard", json={"faxNumber": number}, headers=process.headers)
            assert onboarded.status_code == 200, onboarded.text
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


def shot(browser: webdriver.Chrome, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"fax-app-clinic-{name}.png"))


def letters(length: int = 6) -> str:
    """Unique letters (names are searched as words, so no digits)."""
    return "".join(chr(97 + int(c, 16) % 26) for c in uuid.uuid4().hex[:length])


def caller() -> str:
    return f"+1415555{uuid.uuid4().int % 10_000:04d}"


def new_patient(server: FaxServer, family: str, given: str = "Test", born: str = "1970-01-01") -> dict[str, Any]:
    patient_id = f"{family.lower()}-{uuid.uuid4().hex[:8]}"
    mrn = f"MRN{uuid.uuid4().hex[:7].upper()}"
    body = {"resourceType": "Patient", "id": patient_id, "name": [{"family": family, "given": [given]}],
            "birthDate": born, "identifier": [{"system": "urn:clinic:mrn", "value": mrn}]}  # fmt: skip
    made = httpx.put(f"{server.url}/fhir/Patient/{patient_id}", json=body, headers={**FHIR_JSON, **server.headers})
    assert made.status_code in (200, 201), made.text
    return {**body, "mrn": mrn, "reference": f"Patient/{patient_id}", "display": f"{given} {family}"}


def letter(folder: Path, lines: list[str]) -> Path:
    """A one-page referral letter with a text layer (the server reads it without OCR)."""
    pdf = FPDF()
    pdf.set_font("Helvetica", size=14)
    pdf.add_page()
    for line in lines:
        pdf.cell(0, 10, line, new_x="LMARGIN", new_y="NEXT")
    path = folder / f"letter-{uuid.uuid4().hex[:8]}.pdf"
    pdf.output(str(path))
    return path


def about(patient: dict[str, Any]) -> list[str]:
    born = datetime.fromisoformat(patient["birthDate"]).strftime("%m/%d/%Y")
    return ["Harbor Cardiology Associates", f"RE: {patient['display']}    DOB: {born}", f"MRN: {patient['mrn']}",
            "Dear colleague, thank you for seeing this patient in clinic."]  # fmt: skip


def receive_by_http(server: FaxServer, path: Path, number: str) -> dict[str, Any]:
    received = httpx.post(f"{server.url}/fax/v1/inbound/simulate", params={"from": number, "to": OUR_NUMBER},
                          content=path.read_bytes(), headers={**server.headers, "content-type": "application/pdf"},
                          timeout=120)  # fmt: skip
    assert received.status_code == 201, received.text
    answer: dict[str, Any] = received.json()
    return answer


def get(server: FaxServer, path: str, **params: str) -> dict[str, Any]:
    found = httpx.get(f"{server.url}/fhir/{path}", params=params, headers=server.headers)
    assert found.status_code == 200, found.text
    body: dict[str, Any] = found.json()
    return body


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", [])]


def launch_clinic(server: FaxServer, browser: webdriver.Chrome, user: str = USER, password: str = PASSWORD) -> None:
    """A fresh tab session: the start page, "Clinic inbox and outbox", sign-in and consent (no patient picker)."""
    browser.get(f"{server.url}/apps/fax/config.json")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{server.url}/apps/fax/")
    shown(browser, "#start-clinic").click()
    sign_in_and_allow(browser, user, password)
    shown(browser, "#inbox-view")
    wait_for(browser, lambda d: d.find_element(By.ID, "unfiled-count").text != "")


def unfiled(browser: webdriver.Chrome) -> int:
    return int(browser.find_element(By.ID, "nav-inbox").get_attribute("data-count") or "-1")


def item_css(communication_id: str) -> str:
    return f'li.fax-item[data-communication="{communication_id}"]'


def in_inbox(browser: webdriver.Chrome, communication_id: str) -> bool:
    return bool(browser.find_elements(By.CSS_SELECTOR, item_css(communication_id)))


def focused(browser: webdriver.Chrome, script: str, *args: Any) -> bool:
    """Whether the focused element passes ``script`` (its body sees the element as ``e``)."""
    return bool(browser.execute_script(f"const e = document.activeElement; return !!e && ({script});", *args))


def test_a_received_fax_appears_without_a_reload_and_is_filed_to_the_suggested_patient(
    server: FaxServer, browser: webdriver.Chrome, mongo_uri: str, database_name: str, tmp_path: Path
) -> None:
    patient = new_patient(server, f"Quigley{letters()}".capitalize(), "Rosa", "1961-03-09")
    browser.get(f"{server.url}/apps/fax/config.json")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{server.url}/apps/fax/")
    shown(browser, "#start-view")
    assert browser.find_element(By.ID, "start-patient").text == "A patient's faxes"
    shot(browser, "1-start")
    launch_clinic(server, browser)
    assert "code=" not in browser.current_url and "token" not in browser.current_url
    # Live: a websocket Subscription on every fax; while it is bound the fallback timer does not run, so the fax
    # below can only reach the open inbox through its notification.
    wait_for(browser, lambda d: text_by_id(d, "live-status") == "Live updates on")
    found = httpx.get(f"{server.url}/fhir/Subscription", params={"criteria:exact": "Communication?medium=FAXWRIT",
                      "status": "active"}, headers=server.headers).json()  # fmt: skip
    watching = [e["resource"]["id"] for e in found.get("entry", []) if e["resource"]["channel"]["type"] == "websocket"]
    assert watching, "the clinic view watches every fax"
    before = unfiled(browser)
    browser.execute_script("window.sameDocument = true")

    number = caller()
    document = letter(tmp_path, about(patient))
    command = [*CLI, "inbound", "simulate", str(document), "--from", number, "--to", OUR_NUMBER,
               "--mongodb-uri", mongo_uri]  # fmt: skip
    env = {**os.environ, "FHIR_FAX_DATABASE_NAME": database_name}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    communication_id = done.stdout.split("Communication/", 1)[1].split()[0]

    wait_for(browser, lambda d: in_inbox(d, communication_id))
    wait_for(browser, lambda d: unfiled(d) == before + 1)
    assert browser.execute_script("return window.sameDocument === true"), "no reload"
    with MongoClient(mongo_uri) as mongo:
        sent = mongo[database_name][NOTIFICATIONS].find_one(
            {"subscription": {"$in": watching}, "resource": f"Communication/{communication_id}", "state": "sent"}
        )
    assert sent is not None, "the received fax was notified over the clinic view's websocket"
    assert f"({before + 1} unfiled " in text_by_id(browser, "unfiled-count")
    # The suggestions reach the Task a moment after the fax (the pages are read first); the item may have been
    # shown before them, and is shown again with them.
    suggested = f'{item_css(communication_id)} .suggestions li[data-patient="{patient["reference"]}"]'
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, suggested))
    item = browser.find_element(By.CSS_SELECTOR, item_css(communication_id))
    assert f"Fax from {number} (1 page)" in item.text and "Received " in item.text
    suggestion = browser.find_element(By.CSS_SELECTOR, suggested)
    assert "Strong match (99%)" in suggestion.text
    assert f"Found on page 1: record number {patient['mrn']}, birth date 03/09/1961" in suggestion.text
    wait_for(browser, lambda d: d.execute_script(
        "return arguments[0].querySelector('.page-preview img').naturalWidth > 0", item))  # fmt: skip
    assert item.find_element(By.CSS_SELECTOR, ".pager span").text == "Page 1 of 1"
    shot(browser, "2-inbox")
    checked, low = low_contrast(browser)
    assert checked > 15 and low == []
    past = httpx.get(f"{server.url}/fax/v1/faxes/{communication_id}/preview?page=2", headers=server.headers)
    assert (past.status_code, past.json()["message"]) == (404, "The fax has 1 pages; ask for page 1 to 1.")

    suggestion.find_element(By.XPATH, f'.//button[. = "File to {patient["display"]}"]').click()
    wait_for(browser, lambda d: not in_inbox(d, communication_id))
    expected = f"The fax from {number} is filed to {patient['display']}."
    assert text_by_id(browser, "inbox-done") == expected
    wait_for(browser, lambda d: unfiled(d) == before)

    # Over the API: the Task is completed, the Communication and its DocumentReference carry the patient.
    [task] = entries(get(server, "Task", focus=f"Communication/{communication_id}"))
    assert task["status"] == "completed" and task["for"] == {"reference": patient["reference"]}
    communication = get(server, f"Communication/{communication_id}")
    assert communication["subject"] == {"reference": patient["reference"]}
    [filed] = entries(get(server, "DocumentReference", related=f"Communication/{communication_id}"))
    assert filed["subject"] == {"reference": patient["reference"]}
    assert task["output"][0]["valueReference"] == {"reference": f"DocumentReference/{filed['id']}"}

    # The patient's own view shows it in their fax log, as received.
    browser.find_element(By.ID, "switch-view").click()
    shown(browser, "#start-patient").click()
    sign_in_and_allow(browser, USER, PASSWORD)
    pick_patient(browser, patient["id"])
    shown(browser, "#log-view")
    row = f'#log-table tbody tr[data-id="{communication_id}"]'
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row))
    logged = browser.find_element(By.CSS_SELECTOR, row)
    assert logged.get_attribute("data-status") == "RECEIVED"
    assert "Received" in logged.text and f"Fax machine at {number}" in logged.text
    logged.find_element(By.CSS_SELECTOR, "button").click()  # its pages, now that it is this patient's
    wait_for(browser, lambda d: text_by_id(d, "fax-preview-page") == "Page 1 of 1")
    assert csp_violations(browser) == []

    # The preview shows the pages received, never whatever is uploaded to the same key later.
    preview = f"{server.url}/fax/v1/faxes/{communication_id}/preview"
    received_page = httpx.get(f"{preview}?page=1", headers=server.headers)
    assert received_page.status_code == 200
    key = communication["payload"][0]["contentAttachment"]["url"].split("fax-received/", 1)[1]
    signed = httpx.post(f"{server.url}/v1/z3/fax-received/{key}", json={"action": "upload"}, headers=server.headers)
    assert signed.status_code == 200, signed.text
    two_pages = FPDF()
    two_pages.set_font("Helvetica", size=30)
    for text in ("Not the fax", "received"):
        two_pages.add_page()
        two_pages.cell(0, 20, text)
    put = httpx.put(signed.json()["signedUrl"], content=bytes(two_pages.output()),
                    headers={"content-type": "application/pdf"})  # fmt: skip
    assert put.status_code in (200, 201, 204), put.text
    assert httpx.get(f"{preview}?page=1", headers=server.headers).content == received_page.content
    assert httpx.get(f"{preview}?page=2", headers=server.headers).status_code == 404


def test_suggestions_made_after_the_fax_arrived_still_reach_the_open_inbox(
    server: FaxServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """The server adds its suggestions to the Task after the fax is stored, and a Task change is not a
    Communication change: no notification announces them. The open, live inbox must show them anyway."""
    patient = new_patient(server, f"Brandt{letters()}".capitalize(), "Olga", "1955-02-14")
    launch_clinic(server, browser)
    wait_for(browser, lambda d: text_by_id(d, "live-status") == "Live updates on")
    received = receive_by_http(server, letter(tmp_path, ["A catalogue of office chairs.", "Call us."]), caller())
    communication_id, task_id = received["communication"]["id"], received["task"]["id"]
    wait_for(browser, lambda d: in_inbox(d, communication_id))
    item = browser.find_element(By.CSS_SELECTOR, item_css(communication_id))
    assert "No patient was recognised in this fax" in item.text
    task = get(server, f"Task/{task_id}")
    task["input"] = [{  # what the server's suggestion step writes, a moment after the fax was stored
        "type": {"coding": [{"system": "urn:fhir-fax:task", "code": "suggested-patient"}]},
        "valueReference": {"reference": patient["reference"], "display": patient["display"]},
        "extension": [{"url": CONFIDENCE_EXTENSION, "valueDecimal": 0.9},
                      {"url": EVIDENCE_EXTENSION, "valueString": "birth date 1955-02-14"}],
    }]  # fmt: skip
    updated = httpx.put(f"{server.url}/fhir/Task/{task_id}", json=task, headers={**server.headers, **FHIR_JSON})
    assert updated.status_code == 200, updated.text
    suggestion = f'{item_css(communication_id)} .suggestions li[data-patient="{patient["reference"]}"]'
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, suggestion))
    assert text_by_id(browser, "live-status") == "Live updates on", "shown while live, not by the fallback timer"


def test_not_patient_related_and_filing_to_a_searched_patient_by_keyboard(
    server: FaxServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    family = f"Okafor{letters()}".capitalize()
    suggested = new_patient(server, f"Lindqvist{letters()}".capitalize(), "Ines", "1950-07-21")
    chosen, deleted = new_patient(server, family, "Ada", "1982-05-02"), new_patient(server, family, "Bea", "1979-11-30")
    stranger = receive_by_http(server, letter(tmp_path, ["A catalogue of office chairs.", "Call us for prices."]),
                               caller())  # fmt: skip
    misread = receive_by_http(server, letter(tmp_path, about(suggested)), caller())
    launch_clinic(server, browser)
    for received in (stranger, misread):
        wait_for(browser, lambda d, r=received: in_inbox(d, r["communication"]["id"]))
    stranger_item = browser.find_element(By.CSS_SELECTOR, item_css(stranger["communication"]["id"]))
    assert "No patient was recognised in this fax" in stranger_item.text

    # "Not patient-related", by keyboard: the Task is closed, the fax is filed to nobody.
    browser.execute_script("document.activeElement && document.activeElement.blur()")
    stranger_id = stranger["communication"]["id"]
    tab_to(browser, lambda d: focused(d, "e.closest('li.fax-item')?.dataset.communication === arguments[0] && "
                                         "e.textContent === 'Not patient-related'", stranger_id))  # fmt: skip
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(browser, lambda d: not in_inbox(d, stranger_id))
    assert "is marked not patient-related" in text_by_id(browser, "inbox-done")
    assert focused(browser, "e.tagName === 'H3' || e.id === 'inbox-heading'"), "focus is not lost"
    task = get(server, f"Task/{stranger['task']['id']}")
    assert task["status"] == "completed" and task["businessStatus"]["text"] == "Not patient-related"
    assert "for" not in task and "subject" not in get(server, f"Communication/{stranger_id}")

    # The suggestion is wrong: search by name, by keyboard. A patient deleted meanwhile is refused next to the
    # action, in the server's words, and nothing is filed.
    misread_id, task_id = misread["communication"]["id"], misread["task"]["id"]
    item = browser.find_element(By.CSS_SELECTOR, item_css(misread_id))
    assert item.find_elements(By.CSS_SELECTOR, f'.suggestions li[data-patient="{suggested["reference"]}"]')
    tab_to(browser, lambda d: focused(d, "e.id === arguments[0]", f"fax-{task_id}-name"))
    ActionChains(browser).send_keys(family, Keys.ENTER).perform()
    found = f"#{'fax-' + task_id}-name"
    assert browser.find_element(By.CSS_SELECTOR, found).get_attribute("value") == family
    results = f'{item_css(misread_id)} .patient-results li[data-patient="{{}}"]'
    wait_for(browser, lambda d: all(d.find_elements(By.CSS_SELECTOR, results.format(p["reference"]))
                                    for p in (chosen, deleted)))  # fmt: skip
    gone = httpx.delete(f"{server.url}/fhir/Patient/{deleted['id']}", headers=server.headers)
    assert gone.status_code in (200, 204), gone.text
    assert fits_width(browser, 820), "at tablet width nothing runs off the side"
    tab_to(browser, lambda d: focused(d, "e.textContent === arguments[0]", f"File to {deleted['display']}"))
    shot(browser, "3-inbox-keyboard")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(browser, lambda d: text_by_id(d, f"fax-{task_id}-error") != "")
    refusal = text_by_id(browser, f"fax-{task_id}-error")
    assert refusal == f"Not filed: patient: {deleted['reference']} was deleted; file the fax to an existing patient."
    assert get(server, f"Task/{task_id}")["status"] == "requested", "nothing was filed"
    assert "subject" not in get(server, f"Communication/{misread_id}")
    assert entries(get(server, "DocumentReference", related=f"Communication/{misread_id}")) == []
    assert in_inbox(browser, misread_id)

    tab_to(browser, lambda d: focused(d, "e.textContent === arguments[0]", f"File to {chosen['display']}"))
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(browser, lambda d: not in_inbox(d, misread_id))
    task = get(server, f"Task/{task_id}")
    assert task["status"] == "completed" and task["for"] == {"reference": chosen["reference"]}
    assert get(server, f"Communication/{misread_id}")["subject"] == {"reference": chosen["reference"]}
    assert csp_violations(browser) == []


def send(server: FaxServer, patient: dict[str, Any], sender: str, number: str) -> str:
    body = {"media": "z3://fixtures/referral-letter.pdf", "quality": "standard", "recipientNumber": number,
            "sender": sender, "patient": patient["reference"]}  # fmt: skip
    sent = httpx.post(f"{server.url}/fax/v1/send", json=body, headers=server.headers)
    assert sent.status_code == 200, sent.text
    communication_id: str = sent.json()["communicationResource"]["id"]
    return communication_id


def outbox_rows(browser: webdriver.Chrome) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = browser.execute_script(
        "return [...document.querySelectorAll('#outbox-table tbody tr')]"
        ".map(r => ({id: r.dataset.id, status: r.dataset.status, text: r.innerText}))"
    )
    return rows


def show_outbox(browser: webdriver.Chrome, status: str = "", start: str = "", end: str = "", sender: str = "") -> None:
    """Set the filters and apply them; returns once the table shows the new answer."""
    browser.execute_script("document.querySelector('#outbox-table tbody').replaceChildren()")
    browser.execute_script("document.getElementById('outbox-summary').textContent = ''")
    Select(browser.find_element(By.ID, "outbox-status")).select_by_value(status)
    browser.execute_script(
        "document.getElementById('outbox-from').value = arguments[0];"
        "document.getElementById('outbox-to').value = arguments[1];",
        start,
        end,
    )
    field = browser.find_element(By.ID, "outbox-sender")
    field.clear()
    field.send_keys(sender)
    browser.find_element(By.ID, "outbox-apply").click()
    wait_for(browser, lambda d: text_by_id(d, "outbox-summary") not in ("", "Reading…")
             or text_by_id(d, "outbox-sender-error") or text_by_id(d, "outbox-error"))  # fmt: skip


def test_the_outbox_filters_by_status_dates_and_sender_with_failures_first(
    server: FaxServer, browser: webdriver.Chrome
) -> None:
    patient, other = new_patient(server, f"Outbox{letters()}".capitalize()), new_patient(server, "Sender")
    delivered, stopped = send(server, patient, SENDER, GOOD), send(server, patient, SENDER, BUSY)
    harbor = send(server, other, HARBOR, GOOD)
    for communication_id, status in ((delivered, "completed"), (stopped, "stopped"), (harbor, "completed")):
        deadline = time.monotonic() + 60
        while get(server, f"Communication/{communication_id}")["status"] != status:
            assert time.monotonic() < deadline, f"Communication/{communication_id} never became {status}"
            time.sleep(0.1)
    mine = {delivered, stopped, harbor}
    launch_clinic(server, browser)
    browser.find_element(By.ID, "nav-outbox").click()
    shown(browser, "#outbox-view")
    wait_for(browser, lambda d: mine <= {r["id"] for r in outbox_rows(d)})
    rows = outbox_rows(browser)
    statuses = [r["status"] for r in rows]
    assert statuses == sorted(statuses, key=lambda s: s != "STOPPED"), "stopped faxes first"
    shown_stopped = next(r for r in rows if r["id"] == stopped)
    assert "Stopped: The line was busy." in shown_stopped["text"] and patient["display"] in shown_stopped["text"]
    shot(browser, "4-outbox")
    checked, low = low_contrast(browser)
    assert checked > 20 and low == []
    assert fits_width(browser, 820), "at tablet width the table scrolls in its own box, not the page"

    show_outbox(browser, status="stopped")
    ids = {r["id"] for r in outbox_rows(browser)}
    assert stopped in ids and not ids & {delivered, harbor}
    assert {r["status"] for r in outbox_rows(browser)} == {"STOPPED"}

    today = datetime.now(UTC).date()
    show_outbox(browser, start=today.isoformat(), end=today.isoformat())
    assert mine <= {r["id"] for r in outbox_rows(browser)}
    show_outbox(browser, start=(today + timedelta(days=1)).isoformat())
    assert outbox_rows(browser) == [] and text_by_id(browser, "outbox-summary") == "No sent fax matches."
    show_outbox(browser, end=(today - timedelta(days=1)).isoformat())
    assert not mine & {r["id"] for r in outbox_rows(browser)}
    show_outbox(browser, start=today.isoformat(), end=(today - timedelta(days=1)).isoformat())
    assert text_by_id(browser, "outbox-error") == "The end date is before the start date."

    show_outbox(browser, sender=HARBOR_NUMBER)
    rows = outbox_rows(browser)
    assert harbor in {r["id"] for r in rows} and not {r["id"] for r in rows} & {delivered, stopped}
    assert all("Harbor Cardiology" in r["text"] for r in rows)
    show_outbox(browser, sender="+1 617 555 0199")
    assert text_by_id(browser, "outbox-sender-error") == (
        "No sender has the fax number +16175550199, so no fax was sent from it."
    )
    assert outbox_rows(browser) == []
    show_outbox(browser, sender="617")
    assert text_by_id(browser, "outbox-sender-error") == "Start with + and the country code, e.g. +1 for the US."

    # Row actions as in a patient's log: preview, and resend a stopped fax to a good number.
    show_outbox(browser, sender=OUR_NUMBER)
    row = f'#outbox-table tr[data-id="{stopped}"]'
    browser.find_element(By.CSS_SELECTOR, f"{row} button").click()
    wait_for(browser, lambda d: text_by_id(d, "outbox-preview-page").startswith("Page 1 of "))
    browser.find_element(By.ID, f"outbox-resend-{stopped}").send_keys(GOOD)
    browser.find_element(By.CSS_SELECTOR, f"{row} form.resend button[type=submit]").click()
    wait_for(browser, lambda d: text_by_id(d, "outbox-summary").startswith("Resent."))
    [resend] = entries(get(server, "Communication", **{"part-of": f"Communication/{stopped}"}))
    wait_for(browser, lambda d: any(r["id"] == resend["id"] and r["status"] == "DELIVERED" for r in outbox_rows(d)))
    assert csp_violations(browser) == []


async def add_user(mongo_uri: str, database_name: str, username: str, password: str, policy: dict[str, Any]) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        await Users(client[database_name]).create(username, password, policy)
    finally:
        await client.close()


def test_a_user_whose_policy_cannot_read_the_inbox_is_told_so(
    server: FaxServer, browser: webdriver.Chrome, mongo_uri: str, database_name: str
) -> None:
    username, password = f"front.desk.{letters()}", "front desk password"
    policy = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"},
                       {"resource": "FHIR:Task:*", "action": "*", "effect": "Deny"}]}  # fmt: skip
    asyncio.run(add_user(mongo_uri, database_name, username, password, policy))
    browser.get(f"{server.url}/apps/fax/config.json")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{server.url}/apps/fax/")
    shown(browser, "#start-clinic").click()
    sign_in_and_allow(browser, username, password)
    shown(browser, "#inbox-view")
    wait_for(browser, lambda d: text_by_id(d, "inbox-error") != "")
    said = text_by_id(browser, "inbox-error")
    assert said.startswith("You may not see the inbox of received faxes: ") and "Task" in said, said
    assert said.endswith("Ask an administrator for access to received faxes (Task and Communication).")
    assert text_by_id(browser, "unfiled-count") == "(not available)"
    assert browser.find_elements(By.CSS_SELECTOR, "li.fax-item") == []
    shot(browser, "5-inbox-refused")
    assert csp_violations(browser) == []


def test_the_clinic_views_words_and_queries(server: FaxServer, browser: webdriver.Chrome) -> None:
    """clinic_words.js, run in the browser as the app runs it: evidence in plain words, the outbox's searches."""
    browser.get(f"{server.url}/apps/fax/config.json")
    said = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        import("/apps/fax/clinic_words.js").then(w => done({
          evidence: w.evidenceWords("page 1: identifier 'MRN-7'; page 2: birth date '04/17/1958'; " +
                                    "page 2: family name \\"O'Neil\\""),
          odd: w.evidenceWords("seen by hand"),
          confidence: [0.99, 0.55, 0.3].map(w.confidenceWords),
          counts: [0, 1, 2].map(w.unfiledWords),
          any: w.outboxQueries({}),
          narrowed: w.outboxQueries({status: "stopped", from: "2026-11-01", to: "2026-11-30"},
                                    ["HealthcareService/a b", "Organization/o"]),
          backwards: w.filterProblem({from: "2026-11-30", to: "2026-11-01"}),
        })).catch(e => done({error: String(e)}));"""
    )
    assert "error" not in said, said
    assert said["evidence"] == (
        "Found on page 1: record number MRN-7. Found on page 2: birth date 04/17/1958, family name O'Neil."
    )
    assert said["odd"] == "Found: seen by hand"
    assert said["confidence"] == ["Strong match (99%)", "Likely match (55%)", "Possible match (30%)"]
    assert said["counts"] == ["0 unfiled faxes", "1 unfiled fax", "2 unfiled faxes"]
    outbound = "medium=FAXWRIT&category:not=urn%3Afhir-fax%3Afax-direction%7Cinbound"
    assert said["any"] == [
        f"Communication?status=stopped&{outbound}&_sort=-sent&_count=100",
        f"Communication?status:not=stopped&{outbound}&_sort=-sent&_count=100",
    ]
    assert said["narrowed"] == [
        f"Communication?status=stopped&{outbound}&sent=ge2026-11-01&sent=le2026-11-30"
        "&sender=HealthcareService%2Fa%20b,Organization%2Fo&_sort=-sent&_count=100"
    ]
    assert said["backwards"] == "The end date is before the start date."


INBOX_HARNESS = """
const done = arguments[arguments.length - 1];
(async () => {
  for (const id of ["refresh-inbox", "inbox-error", "inbox-more", "inbox-done", "inbox-empty", "inbox-heading"]) {
    document.getElementById(id)?.remove();
    const element = document.createElement(id === "refresh-inbox" ? "button" : "p");
    element.id = id;
    document.body.append(element);
  }
  document.getElementById("inbox-list")?.remove();
  const list = document.createElement("ul");
  list.id = "inbox-list";
  document.body.append(list);
  const { Inbox } = await import("/apps/fax/inbox.js");
  // the server as the inbox sees it: `queue` is what a read answers; a read waits while `held` is set
  const server = { queue: [], reads: 0, held: null, puts: [] };
  const bundle = () => ({ resourceType: "Bundle", total: server.queue.length,
    entry: server.queue.flatMap(([task, communication]) => [{ resource: task }, { resource: communication }]) });
  const api = {
    fhirBase: "/nowhere",
    async read(query) {
      if (!query.startsWith("Task?")) throw Object.assign(new Error("not here"), { status: 404 });
      server.reads += 1;
      const answer = bundle();  // what the server holds when the read starts
      if (server.held) await server.held;
      return answer;
    },
    async faxPage() { return { blob: new Blob([]), pages: 1 }; },
    async headers(headers) { return headers; },
  };
  window.fetch = async (url, init) => {
    server.puts.push({ url, ifMatch: init.headers["If-Match"] });
    return new Response("{}", { status: 200, headers: { "Content-Type": "application/fhir+json" } });
  };
  const inbox = new Inbox({ api, count() {} });
  const fax = (id, version, input) => [
    { resourceType: "Task", id, status: "requested", meta: { versionId: version },
      focus: { reference: `Communication/c-${id}` }, authoredOn: "2020-01-01T00:00:00Z", ...(input ? { input } : {}) },
    { resourceType: "Communication", id: `c-${id}`, status: "completed", received: "2020-01-01T00:00:00Z" },
  ];
  const said = {};

  // (#4) a reload asked for while a read begun before the change is running reads once more after it
  let release;
  server.held = new Promise((resolve) => { release = resolve; });
  const first = inbox.reload();
  await new Promise((resolve) => setTimeout(resolve, 0));
  server.queue = [fax("t1", "1")];  // a fax arrives; its notification asks for a reload
  const second = inbox.reload();
  server.held = null;
  release();
  await Promise.all([first, second]);
  said.reads = server.reads;
  said.shownAfterPing = [...inbox.items.keys()];

  // (#11) the Task changes (its suggestions come) while focus is inside the item: the element stays, and its
  // actions use the newest version
  const item = inbox.items.get("t1");
  const element = item.element;
  element.querySelector("input[name=name]").focus();
  server.queue = [fax("t1", "2", [{ type: { coding: [{ system: "urn:fhir-fax:task", code: "suggested-patient" }] },
                                   valueReference: { reference: "Patient/p1", display: "Ada Lovelace" } }])];
  await inbox.reload();
  const kept = inbox.items.get("t1");
  said.sameElement = kept?.element === element;
  said.focusKept = element.contains(document.activeElement);
  said.version = kept?.task.meta.versionId;
  said.suggested = [...element.querySelectorAll(".suggestions li")].map((li) => li.dataset.patient);
  server.queue = [];
  element.querySelector(".dismiss button").click();
  for (let i = 0; i < 100 && !server.puts.length; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  said.ifMatch = server.puts.map((p) => p.ifMatch);
  done(said);
})().catch((e) => done({ error: String(e && e.stack || e) }));
"""


def test_the_inbox_reads_again_after_a_change_during_a_read_and_keeps_a_focused_item_current(
    server: FaxServer, browser: webdriver.Chrome
) -> None:
    """inbox.js against a stand-in of its server, in the browser: a reload asked for during a read started before
    the change is not answered with that stale read; an item kept because focus is inside it still acts on the
    newest Task version (so "Not patient-related" sends the If-Match of the version shown)."""
    browser.get(f"{server.url}/apps/fax/config.json")
    said = browser.execute_async_script(INBOX_HARNESS)
    assert "error" not in said, said
    assert said["reads"] == 2 and said["shownAfterPing"] == ["t1"], said
    assert said["sameElement"] and said["focusKept"], said
    assert said["version"] == "2" and said["suggested"] == ["Patient/p1"], said
    assert said["ifMatch"] == ['W/"2"'], said
