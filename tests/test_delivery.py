"""Delivery through the simulator: statuses, failures, retries, reconciliation, kill time, lost documents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from pymongo.errors import AutoReconnect

from fhir_fax.fax.documents import DocumentProblem
from fhir_fax.fax.status import ATTEMPT_EXTENSION, Failure, StatusEvent
from fhir_fax.fax.terminology import FAILURE_REASON_SYSTEM, PAGES_EXTENSION
from fhir_fax.fax.worker import Worker, create_worker
from fhir_fax.fhir.models import model_class
from fhir_fax.settings import Settings

from helpers import MEDIA, SEED_SENDER, outbound_status, serving_fax, wait_final

FAST = {
    "simulator_speed": 1000.0,
    "worker_poll_seconds": 0.02,
    "retry_delay_seconds": 0.05,
    "retry_backoff": 1.0,
}


@pytest.fixture
async def delivering(fax_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serving_fax(fax_settings.model_copy(update=FAST), database) as http:
        yield http


async def send_to(api: httpx.AsyncClient, number: str, quality: str = "standard", media: str = MEDIA) -> str:
    body = {"media": media, "quality": quality, "recipientNumber": number, "sender": SEED_SENDER}
    response = await api.post("/fax/v1/send", json=body)
    assert response.status_code == 200, response.text
    return response.json()["communicationResource"]["id"]


def extension_value(communication: dict[str, Any], url: str) -> Any:
    return next((e["valueInteger"] for e in communication["extension"] if e["url"] == url), None)


async def steps(api: httpx.AsyncClient, communication_id: str) -> list[tuple[str, str]]:
    """(outbound status, lastUpdated) of every version, oldest first."""
    history = (await api.get(f"/fhir/Communication/{communication_id}/_history")).json()
    return [(outbound_status(e["resource"]), e["resource"]["meta"]["lastUpdated"]) for e in reversed(history["entry"])]


@pytest.fixture
async def paced(fax_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The simulator at 10x: its steps come 0.2 s, 0.4 s and 3.4 s after the hand-over, each pushed on its own."""
    async with serving_fax(fax_settings.model_copy(update={**FAST, "simulator_speed": 10.0}), database) as http:
        yield http


async def test_an_ordinary_fax_walks_through_all_four_statuses(paced: httpx.AsyncClient, database: Any) -> None:
    delivering = paced
    communication_id = await send_to(delivering, "+16175550143")
    final = await wait_final(delivering, communication_id)
    assert final["status"] == "completed"
    assert extension_value(final, PAGES_EXTENSION) == 3
    assert extension_value(final, ATTEMPT_EXTENSION) == 1
    received = datetime.fromisoformat(final["received"].replace("Z", "+00:00"))
    assert received >= datetime.fromisoformat(final["sent"].replace("Z", "+00:00"))
    model_class("Communication").model_validate(final)
    history = await steps(delivering, communication_id)
    assert [status for status, _ in history] == ["QUEUED", "PROCESSING", "SENDING", "DELIVERED"]
    times = [at for _, at in history]
    assert times == sorted(times), "each step is a later version"
    job = await database.fax_jobs.find_one({"communication_id": communication_id})
    assert (job["state"], job["status"], job["attempt"]) == ("done", "DELIVERED", 1)
    assert await database.simulator_faxes.count_documents({"reference": f"{job['_id']}:1"}) == 1


@pytest.mark.parametrize(
    ("number", "code", "message", "attempts"),
    [
        ("+16175550002", "BUSY", "The line was busy.", 3),
        ("+16175550003", "NO_ANSWER", "The receiving fax machine did not answer.", 3),
        ("+16175550004", "FAILED", "The fax could not be sent.", 1),
        ("+16175550486", "486", "The receiving line is busy here (SIP 486).", 3),
        ("+16175550005", "UNKNOWN", "The carrier reported a failure without a reason.", 1),
    ],
)
async def test_each_failure_number_ends_stopped_with_its_code(
    delivering: httpx.AsyncClient, database: Any, number: str, code: str, message: str, attempts: int
) -> None:
    communication_id = await send_to(delivering, number)
    final = await wait_final(delivering, communication_id)
    assert final["status"] == "stopped"
    assert final["statusReason"] == {"coding": [{"system": FAILURE_REASON_SYSTEM, "code": code}], "text": message}
    assert extension_value(final, ATTEMPT_EXTENSION) == attempts
    assert [n["text"].split(":")[0] for n in final["note"]] == [
        f"Attempt {n} failed ({code})" for n in range(1, attempts + 1)
    ]
    job = await database.fax_jobs.find_one({"communication_id": communication_id})
    assert (job["state"], len(job["failures"])) == ("done", attempts)
    assert await database.simulator_faxes.count_documents({"to": number}) == attempts, "one submission per attempt"


async def test_a_transient_failure_is_retried_then_delivered(delivering: httpx.AsyncClient) -> None:
    communication_id = await send_to(delivering, "+16175550006")
    final = await wait_final(delivering, communication_id)
    assert final["status"] == "completed"
    assert extension_value(final, ATTEMPT_EXTENSION) == 2
    assert final["note"][0]["text"].startswith("Attempt 1 failed (BUSY): The line was busy. Next attempt at ")
    history = [status for status, _ in await steps(delivering, communication_id)]
    # At 1000x a step already superseded when the carrier's news is pushed (SENDING) is not shown on its own.
    assert [status for status in history if status != "SENDING"] == [
        "QUEUED", "PROCESSING", "QUEUED", "PROCESSING", "DELIVERED",
    ]  # fmt: skip


async def test_quality_lengthens_the_simulated_call(delivering: httpx.AsyncClient, database: Any) -> None:
    ids = {quality: await send_to(delivering, "+16175550143", quality) for quality in ("standard", "superfine")}
    for communication_id in ids.values():
        await wait_final(delivering, communication_id)
    durations = {}
    for quality, communication_id in ids.items():
        job = await database.fax_jobs.find_one({"communication_id": communication_id})
        record = await database.simulator_faxes.find_one({"reference": f"{job['_id']}:1"})
        durations[quality] = record["timeline"][-1]["after"]
    assert durations == {"standard": 4.0 + 3 * 10.0, "superfine": 4.0 + 3 * 40.0}


@pytest.fixture
async def manual(fax_settings: Settings, database: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Worker, Settings]]:
    """The app without its own worker, and a worker the test steps by hand."""
    settings = fax_settings.model_copy(update={**FAST, "worker_enabled": False, "stuck_after_seconds": 0.05})
    async with serving_fax(settings, database) as http:
        yield http, create_worker(settings, database), settings


async def job_of(database: Any, communication_id: str) -> dict[str, Any]:
    return await database.fax_jobs.find_one({"communication_id": communication_id})


async def test_a_document_deleted_before_sending_stops_the_fax(manual: Any, database: Any) -> None:
    api, worker, _ = manual
    communication_id = await send_to(api, "+16175550143")
    versions = await database["z3.files"].distinct("_id", {"filename": "my-bucket/path/to/document.pdf"})
    await database["z3.files"].delete_many({"_id": {"$in": versions}})  # removed outside the API, bytes and all
    await database["z3.chunks"].delete_many({"files_id": {"$in": versions}})
    assert await worker.step() is True
    final = (await api.get(f"/fhir/Communication/{communication_id}")).json()
    assert final["status"] == "stopped"
    assert final["statusReason"]["coding"][0]["code"] == "FAILED"
    assert final["statusReason"]["text"].startswith(
        "Document generation error: z3://my-bucket/path/to/document.pdf was"
    )
    assert await database.simulator_faxes.count_documents({}) == 0, "nothing was handed to the carrier"


async def test_a_lost_webhook_is_reconciled_by_polling_the_carrier(manual: Any, database: Any) -> None:
    api, worker, _ = manual  # the carrier's pushes are never started: every webhook is "lost"
    communication_id = await send_to(api, "+16175550143")
    assert await worker.step() is True
    assert (await job_of(database, communication_id))["state"] == "submitted"
    await asyncio.sleep(0.2)  # the simulated call is over; nobody told us
    assert outbound_status((await api.get(f"/fhir/Communication/{communication_id}")).json()) == "PROCESSING"
    await worker.reconcile()
    final = (await api.get(f"/fhir/Communication/{communication_id}")).json()
    assert (final["status"], outbound_status(final)) == ("completed", "DELIVERED")
    assert [status for status, _ in await steps(api, communication_id)] == [
        "QUEUED",
        "PROCESSING",
        "SENDING",
        "DELIVERED",
    ]


async def test_a_fax_past_its_kill_time_is_stopped(fax_settings: Settings, database: Any) -> None:
    settings = fax_settings.model_copy(update={**FAST, "worker_enabled": False, "kill_time_seconds": 0.1})
    async with serving_fax(settings, database) as api:
        communication_id = await send_to(api, "+16175550143")
        await asyncio.sleep(0.2)
        await create_worker(settings, database).reconcile()
        final = (await api.get(f"/fhir/Communication/{communication_id}")).json()
        assert final["status"] == "stopped"
        assert "kill time" in final["statusReason"]["text"]


async def test_a_job_claimed_after_its_kill_time_is_stopped_not_sent(fax_settings: Settings, database: Any) -> None:
    """A worker that was down past a fax's kill time must not send it before reconciliation gets to it."""
    settings = fax_settings.model_copy(update={**FAST, "worker_enabled": False, "kill_time_seconds": 0.1})
    async with serving_fax(settings, database) as api:
        communication_id = await send_to(api, "+16175550143")
        await asyncio.sleep(0.2)
        worker = create_worker(settings, database)
        worker._last_reconcile = asyncio.get_running_loop().time()  # reconciliation not due: the claim sees it first
        assert await worker.step() is True
        final = (await api.get(f"/fhir/Communication/{communication_id}")).json()
    assert final["status"] == "stopped"
    assert "kill time" in final["statusReason"]["text"]
    assert await database.simulator_faxes.count_documents({}) == 0, "nothing was handed to the carrier"


async def test_stale_duplicate_and_racing_events_never_move_a_fax_backwards(manual: Any, database: Any) -> None:
    api, worker, _ = manual
    communication_id = await send_to(api, "+16175550143")
    await worker.step()
    job = await job_of(database, communication_id)
    reference, moment = f"{job['_id']}:1", datetime.now().astimezone()
    racing = [
        StatusEvent(reference, "SENDING", moment),
        StatusEvent(reference, "DELIVERED", moment, pages=3),
        StatusEvent(reference, "SENDING", moment),
        StatusEvent(reference, "PROCESSING", moment),
    ]
    results = await asyncio.gather(*(worker.tracker.apply(event) for event in racing * 4))
    assert 1 <= sum(results) <= 2, "each forward step happens once"
    final = (await api.get(f"/fhir/Communication/{communication_id}")).json()
    assert (final["status"], outbound_status(final)) == ("completed", "DELIVERED")
    history = [status for status, _ in await steps(api, communication_id)]
    assert history[-1] == "DELIVERED" and history.count("DELIVERED") == 1
    assert history == sorted(history, key=["QUEUED", "PROCESSING", "SENDING", "DELIVERED"].index), "never backwards"
    late = [
        StatusEvent(reference, "FAILED", moment, failure=Failure("BUSY", "late")),
        StatusEvent(reference, "SENDING", moment),
    ]
    assert [await worker.tracker.apply(event) for event in late] == [False, False]
    assert (await api.get(f"/fhir/Communication/{communication_id}")).json() == final
    assert await worker.tracker.apply(StatusEvent("no-such-fax:1", "SENDING", moment)) is False


async def test_events_from_an_earlier_attempt_are_ignored(manual: Any, database: Any) -> None:
    api, worker, _ = manual
    communication_id = await send_to(api, "+16175550006")  # BUSY on attempt 1
    await worker.step()
    job = await job_of(database, communication_id)
    moment = datetime.now().astimezone()
    await worker.tracker.apply(StatusEvent(f"{job['_id']}:1", "FAILED", moment, failure=Failure("BUSY", "busy")))
    assert (await job_of(database, communication_id))["attempt"] == 2
    assert await worker.tracker.apply(StatusEvent(f"{job['_id']}:1", "DELIVERED", moment, pages=3)) is False
    communication = (await api.get(f"/fhir/Communication/{communication_id}")).json()
    assert (outbound_status(communication), extension_value(communication, ATTEMPT_EXTENSION)) == ("QUEUED", 2)


async def test_a_cancellation_reported_as_a_database_error_still_stops_the_worker(
    settings: Settings, database: Any
) -> None:
    """Shutting down must not wait forever when the driver turns the cancellation into a connection error."""
    worker = create_worker(settings, database)

    async def step_interrupted_like_the_driver() -> bool:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise AutoReconnect("connection closed while cancelling") from None
        return True

    worker.step = step_interrupted_like_the_driver  # type: ignore[method-assign]
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(0.2)
    running.cancel()
    await asyncio.wait({running}, timeout=10)
    assert running.done() and running.cancelled()


async def race_a_takeover(database: Any, settings: Settings, prepare_then: Any) -> tuple[Worker, Worker]:
    """Two workers on a 0.3 s lease: the first claims the job and prepares it; while it waits, its lease runs
    out and the second takes the job over and hands it to the carrier; then the first carries on with
    ``prepare_then(submission)``."""
    short_lease = settings.model_copy(update={"lease_seconds": 0.3})
    slow, quick = create_worker(short_lease, database), create_worker(short_lease, database)
    preparing, resume = asyncio.Event(), asyncio.Event()
    original_prepare = slow.prepare

    async def prepare_slowly(job: Any, reference: str) -> Any:
        submission = await original_prepare(job, reference)
        preparing.set()
        await resume.wait()  # the lease runs out meanwhile
        return prepare_then(submission)

    slow.prepare = prepare_slowly  # type: ignore[method-assign]
    first = asyncio.create_task(slow.step())
    await preparing.wait()
    await asyncio.sleep(0.4)
    assert await quick.step() is True, "the second worker takes over the abandoned job"
    resume.set()
    assert await first is True
    return slow, quick


async def test_a_worker_whose_lease_ran_out_while_preparing_never_hands_the_fax_over(
    manual: Any, database: Any
) -> None:
    """Preparing took longer than the lease: another worker took the job over, so the first one must stand down.

    Without the check both workers hand the same attempt to the carrier, and the recipient gets the fax twice.
    """
    api, _, settings = manual
    communication_id = await send_to(api, "+16175550143")
    await race_a_takeover(database, settings, lambda submission: submission)
    job = await job_of(database, communication_id)
    assert job["state"] == "submitted" and list(job["carrier_ids"]) == ["1"]
    handed_over = await database.simulator_faxes.count_documents({"reference": f"{job['_id']}:1"})
    assert handed_over == 1, "the attempt went to the carrier once"


async def test_a_worker_that_lost_its_lease_cannot_stop_the_fax_another_worker_took_over(
    manual: Any, database: Any
) -> None:
    """Its document check failed after the lease ran out: the failure is no longer its to report."""
    api, _, settings = manual
    communication_id = await send_to(api, "+16175550143")

    def fail_late(submission: Any) -> Any:
        raise DocumentProblem("Document generation error: the rendering timed out.")

    await race_a_takeover(database, settings, fail_late)
    job = await job_of(database, communication_id)
    assert job["state"] == "submitted" and job["status"] != "STOPPED"
    final = (await api.get(f"/fhir/Communication/{communication_id}")).json()
    assert final["status"] != "stopped"


async def test_reconciliation_runs_under_a_steady_backlog(manual: Any, database: Any) -> None:
    """With a job to take on every step, reconciliation (kill time, polls, repairs) still runs once a second."""
    api, worker, _ = manual
    for _ in range(2):
        await send_to(api, "+16175550143")
    passes: list[bool] = []
    original = worker.reconcile

    async def counted() -> None:
        passes.append(True)
        await original()

    worker.reconcile = counted  # type: ignore[method-assign]
    assert await worker.step() is True, "a job was taken"
    assert passes == [True], "and the reconciliation that was due ran as well"
