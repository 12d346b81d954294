"""One bad record never stops the others: the worker and reconciliation handle each job on its own.

A "poisoned" record is made the way a record written before the input rules were tightened looks:
a Communication whose contained recipient id ends in a newline (from ``"+16175550143\\n"``), so no
new version of it can ever be stored, or a job missing a field the worker needs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from fhir_fax.fax.worker import Worker, create_worker
from fhir_fax.fhir.models import now
from fhir_fax.settings import Settings

from helpers import MEDIA, SEED_SENDER, serving_fax

FAST = {"simulator_speed": 1000.0, "worker_poll_seconds": 0.02, "retry_delay_seconds": 0.05, "retry_backoff": 1.0}


@pytest.fixture
async def manual(fax_settings: Settings, database: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Worker]]:
    """The app without its own worker, and a worker the test steps by hand."""
    settings = fax_settings.model_copy(update={**FAST, "worker_enabled": False})
    async with serving_fax(settings, database) as http:
        yield http, create_worker(settings, database)


async def send(api: httpx.AsyncClient, number: str = "+16175550143") -> str:
    body = {"media": MEDIA, "quality": "standard", "recipientNumber": number, "sender": SEED_SENDER}
    response = await api.post("/fax/v1/send", json=body)
    assert response.status_code == 200, response.text
    return response.json()["communicationResource"]["id"]


async def job_of(database: Any, communication_id: str) -> dict[str, Any]:
    return await database.fax_jobs.find_one({"communication_id": communication_id})


async def poison(database: Any, communication_id: str) -> None:
    """Make the stored Communication one that no longer validates (a record from before the fix)."""
    await database.Communication.update_one(
        {"_id": communication_id}, {"$set": {"contained.0.id": "16175550143\n", "recipient.0.reference": "#x\n"}}
    )


async def interrupted(database: Any, communication_id: str, **changes: Any) -> None:
    """The job moved on but its writer died before the Communication showed it (long enough ago)."""
    a_minute_ago = now() - timedelta(minutes=1)
    await database.fax_jobs.update_one(
        {"communication_id": communication_id},
        {"$set": {"synced": False, "sync_at": a_minute_ago, "last_news_at": a_minute_ago, **changes}},
    )


async def status_of(api: httpx.AsyncClient, communication_id: str) -> tuple[str, str]:
    communication = (await api.get(f"/fhir/Communication/{communication_id}")).json()
    extension = next(e for e in communication["extension"] if "outbound-fax-status" in e["url"])
    return communication["status"], extension["valueCodeableConcept"]["coding"][0]["code"]


async def test_a_poisoned_record_does_not_stop_kill_time_or_repair_for_the_others(
    manual: Any, database: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api, worker = manual
    poisoned, late, behind = await send(api), await send(api), await send(api)
    await poison(database, poisoned)
    past = now() - timedelta(seconds=1)
    # The poisoned fax comes first in every reconciliation query: unsynced, and past its kill time.
    await interrupted(database, poisoned, kill_at=past, check_at=past)
    await database.fax_jobs.update_one({"communication_id": late}, {"$set": {"kill_at": past, "check_at": past}})
    await interrupted(database, behind, status="PROCESSING", rank=1, position=11, state="active")

    with caplog.at_level(logging.WARNING, logger="fhir_fax"):
        await worker.reconcile()

    assert await status_of(api, late) == ("stopped", "STOPPED"), "kill time is enforced for the others"
    assert await status_of(api, behind) == ("in-progress", "PROCESSING"), "interrupted updates are repaired"
    job = await job_of(database, poisoned)
    assert job["status"] == "STOPPED" and job["synced"] is False, "its own job moved on; its Communication cannot"
    assert job["repair"]["failures"] == 1
    assert "Communication.contained[0].id" in job["repair"]["error"]
    assert job["repair"]["after"] > now(), "retried later, with back-off"
    assert any(poisoned in r.getMessage() and "retry after" in r.getMessage() for r in caplog.records)

    await worker.reconcile()  # still within the back-off: not tried again
    assert (await job_of(database, poisoned))["repair"]["failures"] == 1

    await interrupted(database, poisoned, **{"repair.after": past, "check_at": past})
    await worker.reconcile()  # due again: tried again, and the back-off grows
    again = await job_of(database, poisoned)
    assert again["repair"]["failures"] == 2
    assert again["repair"]["after"] - now() > job["repair"]["after"] - job["repair"]["at"]


async def test_fifty_poisoned_jobs_do_not_starve_the_fifty_first(manual: Any, database: Any) -> None:
    """Each pass takes up to 50 jobs: poisoned ones wait out their back-off and leave room for the rest."""
    api, worker = manual
    template = await job_of(database, await send(api))
    past = now() - timedelta(seconds=1)
    await database.fax_jobs.insert_many(
        [
            {k: v for k, v in template.items() if k != "attempt"} | {"_id": f"bad-{n}", "communication_id": f"bad-{n}"}
            for n in range(50)
        ]  # no attempt number: the kill-time step cannot even name the attempt it stops
    )
    await database.fax_jobs.update_many({}, {"$set": {"kill_at": past, "check_at": past}})
    await worker.reconcile()
    await worker.reconcile()
    assert await status_of(api, template["communication_id"]) == ("stopped", "STOPPED")
    assert await database.fax_jobs.count_documents({"repair.failures": 1}) == 50


async def test_a_job_the_worker_cannot_handle_is_set_aside_and_the_next_one_is_sent(
    manual: Any, database: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api, worker = manual
    broken, fine = await send(api), await send(api)
    await database.fax_jobs.update_one({"communication_id": broken}, {"$unset": {"media": ""}})

    with caplog.at_level(logging.WARNING, logger="fhir_fax"):
        assert await worker.step() is True, "the broken job was taken and set aside, without raising"
    job = await job_of(database, broken)
    assert job["repair"]["failures"] == 1 and "media" in job["repair"]["error"]
    assert job["lease_expires"] >= job["repair"]["after"] - timedelta(seconds=1), "nobody takes it over before then"
    assert any(job["_id"] in r.getMessage() for r in caplog.records)

    assert (await job_of(database, fine))["state"] == "submitted", "the next job was sent (taken in the same step)"
    assert await database.simulator_faxes.count_documents({}) == 1
    assert await worker.step() is False, "the broken job is not taken again during its back-off"
    assert (await job_of(database, broken))["repair"]["failures"] == 1


async def test_a_poisoned_communication_does_not_stop_its_own_delivery(manual: Any, database: Any) -> None:
    """The job is the truth; a Communication that cannot take a new version is repaired later, not a stop."""
    api, worker = manual
    poisoned = await send(api)
    await poison(database, poisoned)
    assert await worker.step() is True
    job = await job_of(database, poisoned)
    assert job["state"] == "submitted" and job["synced"] is False
    assert job["repair"]["failures"] == 1


async def test_a_poll_applies_only_news_about_the_attempt_it_asked_for(
    manual: Any, database: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api, worker = manual
    asked, other = await send(api), await send(api)
    assert await worker.step() is True  # both taken (in one step: a worker has several attempts in hand)
    other_job = await job_of(database, other)
    # The record of "asked" names the carrier fax of "other" (a damaged record); "other" itself is not quiet.
    await database.fax_jobs.update_one(
        {"communication_id": asked},
        {
            "$set": {
                "carrier_ids.1": other_job["carrier_ids"]["1"],
                "last_news_at": now() - timedelta(minutes=10),
                "check_at": now(),
            }
        },
    )
    await database.fax_jobs.update_one(
        {"communication_id": other}, {"$set": {"last_news_at": now() + timedelta(minutes=10)}}
    )
    await database.simulator_faxes.update_many({}, {"$set": {"submitted_at": now() - timedelta(hours=1)}})
    worker.settings = worker.settings.model_copy(update={"stuck_after_seconds": 60.0})
    with caplog.at_level(logging.WARNING, logger="fhir_fax"):
        await worker.reconcile()
    assert (await job_of(database, other))["status"] == "PROCESSING", "not moved by a poll about another fax"
    assert (await job_of(database, asked))["status"] == "PROCESSING"
    assert any(f"{other_job['_id']}:1" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
