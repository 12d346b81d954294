"""Suggestions on the triage Task: the patients a received fax is about (text layer or OCR) and its sender."""

from __future__ import annotations

from typing import Any

import httpx
from inbound_letters import DISTRACTORS, PATIENTS, STRANGER, Letter, letter, patient_resource

from fhir_fax.fax.inbound_document import accept, read_texts
from fhir_fax.fax.suggestions import dates_in, patient_suggestions
from fhir_fax.fhir.store import ResourceStore

from inbound_helpers import REFERRAL, simulate

CONFIDENCE = "urn:fhir-fax:extension:suggestion-confidence"
EVIDENCE = "urn:fhir-fax:extension:suggestion-evidence"


def suggested(task: dict[str, Any], kind: str) -> list[tuple[str, float, str]]:
    found = []
    for item in task.get("input", []):
        if item["type"]["coding"][0]["code"] == kind:
            extensions = {e["url"]: e for e in item["extension"]}
            found.append(
                (
                    item["valueReference"]["reference"],
                    extensions[CONFIDENCE]["valueDecimal"],
                    extensions[EVIDENCE]["valueString"],
                )
            )
    return found


async def test_the_task_proposes_the_patient_and_the_sender_from_text_or_ocr(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    response = await simulate(fax_api, REFERRAL, caller="+16175550141")  # Harbor Cardiology's fax line
    assert response.status_code == 201, response.text
    task = response.json()["task"]
    [(patient, confidence, evidence)] = suggested(task, "suggested-patient")
    assert patient == "Patient/maria-lopez" and confidence >= 0.9
    assert "page 1: identifier 'RFM-100231'" in evidence and "page 1: birth date '1958-04-17'" in evidence
    assert suggested(task, "suggested-sender")[0][:2] == ("Organization/harbor-cardiology", 0.9)
    stored = (await fax_api.get(f"/fhir/Task/{task['id']}")).json()
    assert stored["input"] == task["input"] and stored["status"] == "requested", "proposed, never filed"
    assert "subject" not in (await fax_api.get(f"/fhir/Communication/{task['focus']['reference'][14:]}")).json()
    assert await database["DocumentReference"].count_documents({}) == 0
    # a scanned fax (a fine-resolution TIFF) is read by OCR
    person = PATIENTS[3]
    await fax_api.put(f"/fhir/Patient/{person.key}", json=patient_resource(person))
    scan = letter(f"{person.key}-fax")
    task = (await simulate(fax_api, scan.document)).json()["task"]
    [(patient, confidence, evidence)] = suggested(task, "suggested-patient")
    assert patient == f"Patient/{person.key}" and confidence >= 0.7
    assert "family name 'Alvarez'" in evidence and "birth date" in evidence


def test_dates_in_the_forms_letters_use() -> None:
    text = "DOB 04/17/1958; born 1958-04-17; April 17, 1958; 17 Apr 1958; scanned O4/l7/1958"
    assert set(dates_in(text)) == {"1958-04-17"}
    assert set(dates_in("05/06/2001")) == {"2001-05-06", "2001-06-05"}, "US and European readings both kept"
    assert dates_in("13/13/2001 and 1958-02-30") == {}


async def precision(database: Any, sample: list[Letter]) -> tuple[int, int, int]:
    """(letters with a suggestion, whose first suggestion is right, letters about known patients)."""
    store = ResourceStore(database)
    for person in PATIENTS + DISTRACTORS:
        await store.put_if_changed(patient_resource(person))
    proposed = right = 0
    for item in sample:
        pdf = (await accept(item.document, 10)).pdf
        found = await patient_suggestions(database, await read_texts(pdf, True, 60))
        if found:
            proposed += 1
            right += found[0].reference == f"Patient/{item.person.key}"
    return proposed, right, sum(1 for item in sample if item.person.key)


async def test_suggestions_find_the_right_patient_in_synthetic_letters(database: Any) -> None:
    # A clean letter, a scan and a fax of patients with distractors (same name, or same birth date and a
    # similar name), and a letter about someone the practice does not know. The whole set, with noisier
    # standard-resolution faxes, is measured by benchmarks/inbound_suggestions.py.
    names = ("p-okafor-text", "p-okafor-scan", "p-nguyen-fax", "p-schmidt-text", "stranger-scan")
    sample = [letter(name) for name in names]
    assert sample[-1].person == STRANGER
    proposed, right, known = await precision(database, sample)
    assert (proposed, right, known) == (4, 4, 4), "every known patient found, first; the stranger matches nobody"
