"""Resend: a stopped fax is sent again, exactly as frozen, as a new Communication linked to the original."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from test_packets import pages_extension, pdf_with_pages, put

from fhir_fax.settings import Settings

from helpers import FHIR_JSON, SEED_SENDER, SENDER_NUMBER, outbound_status, serving, stored_counts, wait_final

FAST = {
    "simulator_speed": 1000.0,
    "worker_poll_seconds": 0.02,
    "retry_delay_seconds": 0.05,
    "retry_backoff": 1.0,
    "retry_max_attempts": 1,
}
ALWAYS_BUSY = "+16175550002"  # the simulator reports BUSY for every attempt to a number ending in 0002
ANSWERS = "+16175550143"


@pytest.fixture
async def delivering(fax_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(fax_settings.model_copy(update=FAST), database) as http:
        assert (await http.post("/fax/v1/onboard", json={"faxNumber": SENDER_NUMBER})).status_code == 200
        yield http


@pytest.fixture
async def held(fax_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    """No worker: every fax stays in flight (QUEUED)."""
    async with serving(fax_settings.model_copy(update={"worker_enabled": False}), database) as http:
        assert (await http.post("/fax/v1/onboard", json={"faxNumber": SENDER_NUMBER})).status_code == 200
        yield http


async def send(api: httpx.AsyncClient, media: list[str], number: str) -> dict[str, Any]:
    body = {"media": media, "quality": "standard", "recipientNumber": number, "sender": SEED_SENDER}
    response = await api.post("/fax/v1/send", json={**body, "coverPage": True, "coverNote": "Second try"})
    assert response.status_code == 200, response.text
    communication: dict[str, Any] = response.json()["communicationResource"]
    return communication


def resend_parameters(**inputs: str) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": k, "valueString": v} for k, v in inputs.items()]}


async def test_a_stopped_fax_is_resent_as_frozen_delivered_and_linked(
    delivering: httpx.AsyncClient, database: Any
) -> None:
    urls = [await put(database, pdf_with_pages(2)), await put(database, pdf_with_pages(1))]
    original = await send(delivering, urls, ALWAYS_BUSY)
    stopped = await wait_final(delivering, original["id"])
    assert outbound_status(stopped) == "STOPPED"
    # The keys now hold other documents: a resend still sends what the original froze.
    for url in urls:
        await put_at(database, url, pdf_with_pages(3))

    response = await delivering.post(
        f"/fhir/Communication/{original['id']}/$resend",
        json=resend_parameters(recipientNumber=ANSWERS),
        headers={**FHIR_JSON, "Idempotency-Key": key()},
    )
    assert response.status_code == 200, response.text
    again = response.json()
    assert again["id"] != original["id"]
    assert again["partOf"] == [{"reference": f"Communication/{original['id']}"}]
    assert [p["contentAttachment"]["hash"] for p in again["payload"]] == [
        p["contentAttachment"]["hash"] for p in original["payload"]
    ]
    assert pages_extension(again) == 4, "cover + 2 + 1, as frozen"
    assert again["contained"][0]["telecom"][0]["value"] == ANSWERS

    delivered = await wait_final(delivering, again["id"])
    assert outbound_status(delivered) == "DELIVERED" and pages_extension(delivered) == 4
    jobs = {
        job["communication_id"]: job
        async for job in database.fax_jobs.find({"communication_id": {"$in": [original["id"], again["id"]]}})
    }
    assert [d["version"] for d in jobs[again["id"]]["documents"]] == [
        d["version"] for d in jobs[original["id"]]["documents"]
    ]
    assert jobs[again["id"]]["cover"]["note"] == "Second try" and jobs[again["id"]]["resend_of"] == original["id"]
    assert jobs[again["id"]]["cover"]["recipient_fax"] == ANSWERS
    now = (await delivering.get(f"/fhir/Communication/{original['id']}")).json()
    assert now["meta"]["versionId"] == stopped["meta"]["versionId"], "the original gets no new status"
    linked = await delivering.get("/fhir/Communication", params={"part-of": f"Communication/{original['id']}"})
    assert [e["resource"]["id"] for e in linked.json()["entry"]] == [again["id"]]


async def put_at(database: Any, url: str, data: bytes) -> None:
    from fhir_fax.z3.locations import parse_z3_url
    from fhir_fax.z3.store import Z3Store

    await Z3Store(database).put(parse_z3_url(url, ()), data, "application/pdf")


def key() -> str:
    return str(uuid.uuid4())


async def test_a_fax_in_flight_is_not_resent(held: httpx.AsyncClient, database: Any) -> None:
    original = await send(held, [await put(database, pdf_with_pages(1))], ANSWERS)
    before = await stored_counts(database)
    response = await held.post("/fax/v1/resend", json={"communicationId": original["id"]})
    assert response.status_code == 409
    assert response.json() == {
        "message": f"Communication/{original['id']} is still in flight (outbound status QUEUED); wait until it is "
        "delivered or stopped, then resend it.",
        "code": 409,
    }
    fhir = await held.post(f"/fhir/Communication/{original['id']}/$resend", json=resend_parameters())
    assert fhir.status_code == 409 and "still in flight" in fhir.json()["issue"][0]["diagnostics"]
    assert await stored_counts(database) == before


async def test_the_same_key_replays_the_same_resend(held: httpx.AsyncClient, database: Any) -> None:
    original = await send(held, [await put(database, pdf_with_pages(1))], ANSWERS)
    await database.fax_jobs.update_one(  # as a finished fax would be (no worker runs here)
        {"communication_id": original["id"]}, {"$set": {"state": "done", "status": "STOPPED"}}
    )
    headers = {"Idempotency-Key": key()}
    body = {"communicationId": original["id"], "recipient": "Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c"}
    first = await held.post("/fax/v1/resend", json=body, headers=headers)
    assert first.status_code == 200, first.text
    counts = await stored_counts(database)
    second = await held.post("/fax/v1/resend", json=body, headers=headers)
    assert second.status_code == 200 and second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert await stored_counts(database) == counts, "one effect"
    resent = first.json()["communicationResource"]
    assert resent["recipient"] == [{"reference": body["recipient"]}]
    other = await held.post("/fax/v1/resend", json={**body, "recipient": None}, headers=headers)
    assert other.status_code == 422 and "already used for a different fax request" in other.json()["message"]


REFUSED: list[tuple[dict[str, Any], int, str]] = [
    ({"communicationId": "does-not-exist"}, 404, "Communication/does-not-exist"),
    ({}, 400, "Parameter 'communicationId' is required"),
    ({"communicationId": "x", "colour": "red"}, 400, "Unknown parameter 'colour'"),
]


async def test_a_resend_that_cannot_be_made_is_refused(held: httpx.AsyncClient, database: Any) -> None:
    before = await stored_counts(database)
    for body, status, message in REFUSED:
        response = await held.post("/fax/v1/resend", json=body)
        assert response.status_code == status and message in response.json()["message"], response.text
    assert await stored_counts(database) == before


async def test_a_resend_follows_the_rules_of_a_send(held: httpx.AsyncClient, database: Any) -> None:
    original = await send(held, [await put(database, pdf_with_pages(1))], ANSWERS)
    await database.fax_jobs.update_one(
        {"communication_id": original["id"]}, {"$set": {"state": "done", "status": "STOPPED"}}
    )
    offboarded = await held.post("/fax/v1/offboard", json={"faxNumber": SENDER_NUMBER})
    assert offboarded.status_code == 200
    before = await stored_counts(database)
    response = await held.post("/fax/v1/resend", json={"communicationId": original["id"]})
    assert response.status_code == 422 and "is not onboarded" in response.json()["message"]
    both = await held.post(
        "/fax/v1/resend",
        json={"communicationId": original["id"], "recipient": "Practitioner/x", "recipientNumber": ANSWERS},
    )
    assert both.status_code == 400 and "at most one of 'recipient' and 'recipientNumber'" in both.json()["message"]
    assert await stored_counts(database) == before


async def test_an_original_without_a_sender_is_refused_naming_it(held: httpx.AsyncClient, database: Any) -> None:
    original = await send(held, [await put(database, pdf_with_pages(1))], ANSWERS)
    await database.fax_jobs.update_one(
        {"communication_id": original["id"]}, {"$set": {"state": "done", "status": "STOPPED"}}
    )
    current = (await held.get(f"/fhir/Communication/{original['id']}")).json()
    current.pop("sender")
    changed = await held.put(f"/fhir/Communication/{original['id']}", json=current, headers=FHIR_JSON)
    assert changed.status_code == 200, changed.text  # R4B makes sender optional
    before = await stored_counts(database)
    message = (
        f"Communication/{original['id']} names no sender (sender.reference), so it cannot be resent as it was; "
        "send it as a new fax with a sender, or restore the original's sender."
    )
    sdk = await held.post("/fax/v1/resend", json={"communicationId": original["id"]})
    assert sdk.status_code == 422, sdk.text
    assert sdk.json() == {"message": message, "code": 422}
    fhir = await held.post(f"/fhir/Communication/{original['id']}/$resend", json=resend_parameters())
    assert fhir.status_code == 422, fhir.text
    issue = fhir.json()["issue"][0]
    assert issue["diagnostics"] == message and issue["expression"] == ["sender"]
    assert await stored_counts(database) == before
