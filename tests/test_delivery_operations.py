"""A fax costs the database few operations, and each one saved keeps what it was for.

Counted with the commands a client sends (``helpers.Commands``): a document pinned once is not pinned again, the
worker reads a pinned document's bytes in one read (their hash proves them), news the worker already knows to be
stale writes nothing, and "the Communication shows it" marks made together are written together.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from fhir_fax.fax.jobs import Job
from fhir_fax.fax.status import StatusEvent
from fhir_fax.fax.worker import create_worker
from fhir_fax.fhir.models import now
from fhir_fax.settings import Settings
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import MEDIA, SEED_SENDER, Commands, serving_fax

BODY = {"media": MEDIA, "quality": "standard", "recipientNumber": "+16175550143", "sender": SEED_SENDER}


@pytest.fixture
async def counted(mongo_uri: str) -> AsyncIterator[tuple[Any, Commands]]:
    """A database of its own, on a client that records every command it sends."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    commands = Commands(name)
    client: Any = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[commands])
    yield client[name], commands
    await client.drop_database(name)
    await client.close()


async def send(api: Any) -> str:
    response = await api.post("/fax/v1/send", json=BODY)
    assert response.status_code == 200, response.text
    return str(response.json()["communicationResource"]["id"])


async def test_an_upload_is_pinned_by_its_first_fax_and_read_once_per_send_after(
    fax_settings: Settings, counted: tuple[Any, Commands]
) -> None:
    database, commands = counted
    settings = fax_settings.model_copy(update={"worker_enabled": False})
    async with serving_fax(settings, database) as api:
        commands.clear()
        first = await send(api)
        assert commands.on("z3.files") == ["find", "update"], "looked up, then pinned"
        assert commands.on("z3.chunks") == ["find"], "its bytes inspected in one read"
        commands.clear()
        second = await send(api)
        assert commands.on("z3.files") == ["find"], "found pinned already: no second pin"
        assert commands.on("z3.chunks") == [], "the inspection of that version is remembered"
        jobs = [await database.fax_jobs.find_one({"communication_id": c}) for c in (first, second)]
        assert jobs[0]["media_version"] == jobs[1]["media_version"]
        pinned = await database["z3.files"].find_one({"_id": jobs[0]["media_version"]})
        assert pinned["metadata"]["pinned"] is True and pinned["metadata"]["sha1"] == jobs[0]["media_sha1"]


async def test_the_worker_reads_a_pinned_document_once_and_stale_news_writes_nothing(
    fax_settings: Settings, counted: tuple[Any, Commands]
) -> None:
    """The first fax of an upload: its bytes in one read of the chunks (no look-up of the version: the job knows
    its hash, which proves them), rendered and kept. The next fax of the same upload: the kept rendering, nothing
    read. The carrier then reports a step the worker knows is behind: nothing written."""
    database, commands = counted
    settings = fax_settings.model_copy(
        update={"worker_enabled": False, "simulator_speed": 0.001, "worker_concurrency": 1}
    )
    async with serving_fax(settings, database) as api:
        first, second = await send(api), await send(api)
        version = (await database.fax_jobs.find_one({"communication_id": first}))["media_version"]
        worker = create_worker(settings, database)
        commands.clear()
        assert await worker.step() is True
        assert commands.filters("find", "z3.chunks") == [{"files_id": version}], "the pinned bytes, in one read"
        assert [f for f in commands.filters("find", "z3.files") if "_id" in f] == [], "no look-up of the version"
        commands.clear()
        assert await worker.step() is True
        assert commands.on("z3.chunks") == [] and commands.on("z3.files") == [], "the kept rendering of that version"
        job = Job.of(await database.fax_jobs.find_one({"communication_id": second}))
        assert job.state.value == "submitted" and job.media_version == version
        commands.clear()
        applied = await worker.tracker.apply(StatusEvent(job.reference, "PROCESSING", now(), source="simulator"))
        assert applied is False and commands.on("fax_jobs") == [], "already further on, as this worker knows"
        assert (await database.fax_jobs.find_one({"_id": job.id}))["status"] == "PROCESSING"


async def test_synced_marks_made_together_are_written_together(
    fax_settings: Settings, counted: tuple[Any, Commands]
) -> None:
    database, commands = counted
    settings = fax_settings.model_copy(update={"worker_enabled": False})
    async with serving_fax(settings, database) as api:
        ids = [await send(api) for _ in range(4)]
        await database.fax_jobs.update_many({}, {"$set": {"synced": False, "sync_at": now()}})
        jobs = [Job.of(await database.fax_jobs.find_one({"communication_id": c})) for c in ids]
        moved_on = jobs[3]
        await database.fax_jobs.update_one({"_id": moved_on.id}, {"$set": {"rank": moved_on.position.rank + 1}})
        outbox = create_worker(settings, database).outbox
        commands.clear()
        await asyncio.gather(*(outbox.mark_synced(job) for job in jobs))
        assert commands.on("fax_jobs") == ["update"], "four marks of one (attempt, status): one write"
        stored = {j["communication_id"]: j async for j in database.fax_jobs.find({})}
        assert [stored[c]["synced"] for c in ids] == [True, True, True, False], "a job that moved on is left"
        assert all("sync_at" not in stored[c] for c in ids[:3]) and "sync_at" in stored[ids[3]]


async def test_a_version_read_once_is_kept(counted: tuple[Any, Commands]) -> None:
    """The worker taking a fax in the process whose send inspected the document moments before reads nothing
    again: versions never change."""
    database, commands = counted
    store = Z3Store(database)
    letter = b"%PDF-1.4 a letter" * 100
    info = await store.put(Z3Location("letters", "kept.pdf"), letter, "application/pdf")
    commands.clear()
    assert await store.read_known(info.version, info.size) == letter
    assert await store.read_known(info.version) == letter
    assert commands.on("z3.chunks") == ["find"], "read once"
    assert await store.read_known(info.version, info.size + 1) is None, "not the length the caller knows"


async def test_a_synced_mark_that_cannot_be_written_is_not_raised_and_its_repair_time_stands(
    fax_settings: Settings, counted: tuple[Any, Commands]
) -> None:
    """The marks of several faxes share a write: its failure must not fail each of their callers (the tracker
    brings Communications in line without raising). Reconciliation finds the job by its ``sync_at``."""
    database, _ = counted
    settings = fax_settings.model_copy(update={"worker_enabled": False})
    async with serving_fax(settings, database) as api:
        fax = await send(api)
        await database.fax_jobs.update_one({"communication_id": fax}, {"$set": {"synced": False, "sync_at": now()}})
        job = Job.of(await database.fax_jobs.find_one({"communication_id": fax}))
        outbox = create_worker(settings, database).outbox

        async def refused(*args: Any, **kwargs: Any) -> None:
            raise ConnectionError("the database went away")

        outbox._synced.write = refused  # the write the marks' group writer makes fails
        await outbox.mark_synced(job)
        stored = await database.fax_jobs.find_one({"_id": job.id})
    assert stored["synced"] is False and "sync_at" in stored
