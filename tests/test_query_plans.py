"""Nothing on the delivery path costs more as history grows: every query it makes reads an index.

The app (API, worker, reconciliation, simulator) runs on a client that records every command it sends.
Faxes are sent and delivered, one retried, one polled after going quiet and one stopped at its kill time;
then every filter that was sent is planned again with ``explain`` on a database that also holds finished
faxes. A filter naming documents by ``_id`` is a primary-key lookup on any engine; every other one must
show an index scan, never ``COLLSCAN``.

The embedded database's ``explain`` reports a filter of ``_id`` plus other fields as COLLSCAN although it
runs it as a primary-key lookup (its planner mirror stops before that rule); MongoDB proper shows IDHACK or
an index scan. Those filters are therefore checked by their ``_id`` alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from fhir_fax.fhir.models import now
from fhir_fax.settings import Settings

from helpers import MEDIA, SEED_SENDER, eventually, serving_fax, wait_final

# Collections whose size does not follow the number of faxes sent, with why a full read of them is fine.
SMALL = {
    "fax_numbers": "the project's onboarded numbers (a handful), read whole per send",
}
READ_KINDS = {"find": "filter", "count": "query", "delete": "deletes", "update": "updates"}


class Recorder(monitoring.CommandListener):
    """Every (collection, filter, sort) the app sent, as sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        self.database = ""
        self.recording = False  # off while a server starts (its one-off migrations are not on any hot path)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.recording or event.database_name != self.database or event.command_name not in READ_KINDS:
            return
        command = event.command
        collection = command[event.command_name]
        if event.command_name == "find":
            self.seen.append((collection, dict(command.get("filter") or {}), command.get("sort")))
        elif event.command_name == "count":
            self.seen.append((collection, dict(command.get("query") or {}), None))
        elif event.command_name == "update":
            self.seen += [(collection, dict(u["q"]), None) for u in command["updates"]]
        else:
            self.seen += [(collection, dict(d["q"]), None) for d in command["deletes"]]

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def recorded(mongo_uri: str) -> AsyncIterator[tuple[Any, Recorder]]:
    recorder = Recorder()
    client: Any = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[recorder])
    recorder.database = f"t_{uuid.uuid4().hex[:16]}"
    yield client[recorder.database], recorder
    await client.drop_database(recorder.database)
    await client.close()


def keyed(query: dict[str, Any]) -> Any:
    """The ``_id`` the filter names (a value or ``$in``), or None when it names none."""
    value = query.get("_id")
    if value is None or (isinstance(value, dict) and set(value) - {"$in", "$eq"}):
        return None
    return value


def shape(query: Any) -> Any:
    """The filter with its values left out: which fields, which operators."""
    if isinstance(query, dict):
        return {k: shape(v) if k.startswith("$") or isinstance(v, dict) else "?" for k, v in query.items()}
    if isinstance(query, list):
        return [shape(v) for v in query]
    return "?"


async def test_every_query_of_sending_and_delivery_reads_an_index(
    fax_settings: Settings, recorded: tuple[Any, Recorder]
) -> None:
    database, recorder = recorded
    fast = {
        "simulator_speed": 1000.0, "worker_poll_seconds": 0.02, "retry_delay_seconds": 0.05, "retry_backoff": 1.0,
        "stuck_after_seconds": 0.05,
    }  # fmt: skip
    settings = fax_settings.model_copy(update=fast)
    async with serving_fax(settings, database) as api:
        recorder.recording = True
        ids = []
        for number in ("+16175550143", "+16175550006", "+16175550004"):  # delivered, retried then delivered, failed
            body = {"media": MEDIA, "quality": "standard", "recipientNumber": number, "sender": SEED_SENDER}
            response = await api.post("/fax/v1/send", json=body, headers={"idempotency-key": str(uuid.uuid4())})
            assert response.status_code == 200, response.text
            ids.append(response.json()["communicationResource"]["id"])
        for communication_id in ids:
            await wait_final(api, communication_id)
        late = settings.model_copy(update={"kill_time_seconds": 0.01, "worker_enabled": False})
        recorder.recording = False
        async with serving_fax(late, database) as paused:  # a second server with no worker: a fax waits, is killed
            recorder.recording = True
            body = {"media": MEDIA, "quality": "standard", "recipientNumber": "+16175550143", "sender": SEED_SENDER}
            killed = (await paused.post("/fax/v1/send", json=body)).json()["communicationResource"]["id"]
        assert (await wait_final(api, killed))["status"] == "stopped"

        async def reconciled() -> bool | None:  # reconciliation runs once a second, whatever the fax did
            return True if any(c == "fax_jobs" and "check_at" in q for c, q, _ in recorder.seen) else None

        await eventually(reconciled, within=30, failure=lambda: "no reconciliation pass was seen")
        recorder.recording = False

    finished = await database.fax_jobs.find_one({"state": "done"}, {"_id": 0})
    await database.fax_jobs.insert_many(
        [{**finished, "_id": f"old-{n}", "communication_id": f"old-{n}", "created": now() - timedelta(days=90)}
         for n in range(300)]
    )  # fmt: skip
    shapes: dict[str, tuple[str, dict[str, Any], dict[str, Any] | None]] = {}
    for collection, query, sort in recorder.seen:
        shapes.setdefault(json.dumps([collection, shape(query), sort], default=str), (collection, query, sort))
    assert any(c == "fax_jobs" and "due_at" in q for c, q, _ in shapes.values()), "the worker's claims were seen"
    assert any(c == "fax_jobs" and "check_at" in q for c, q, _ in shapes.values()), "kill time and polls were seen"
    assert any(c == "simulator_faxes" and "next_at" in q for c, q, _ in shapes.values()), "the carrier was seen"

    scans = []
    for collection, query, sort in shapes.values():
        if collection in SMALL or collection.startswith("system."):
            continue
        value = keyed(query)
        planned = {"_id": value} if value is not None else query
        cursor = database[collection].find(planned)
        if sort and value is None:
            cursor = cursor.sort(list(sort.items()))
        plan = json.dumps(await cursor.explain(), default=str)
        if "COLLSCAN" in plan or ("IXSCAN" not in plan and "IDHACK" not in plan and value is None):
            scans.append(f"{collection}: {json.dumps(shape(query))} sort={sort}")
    assert not scans, "queries that read every document:\n" + "\n".join(scans)


async def test_a_finished_fax_has_no_due_time(fax_settings: Settings, database: Any) -> None:
    """The due-time indexes hold only faxes something must still happen to (they are sparse)."""
    settings = fax_settings.model_copy(update={"simulator_speed": 1000.0, "worker_poll_seconds": 0.02})
    async with serving_fax(settings.model_copy(update={"worker_enabled": False}), database) as api:
        body = {"media": MEDIA, "quality": "standard", "recipientNumber": "+16175550143", "sender": SEED_SENDER}
        communication_id = (await api.post("/fax/v1/send", json=body)).json()["communicationResource"]["id"]
        queued = await database.fax_jobs.find_one({"communication_id": communication_id})
        assert queued["due_at"] == queued["created"] and queued["check_at"] == queued["kill_at"]
    async with serving_fax(settings, database) as api:
        await wait_final(api, communication_id)

        async def settled() -> dict[str, Any] | None:
            """The job once its "Communication in line" mark is written: that write follows the Communication's
            version (grouped with others), and a server stopped in between leaves it to reconciliation."""
            found: dict[str, Any] | None = await database.fax_jobs.find_one({"communication_id": communication_id})
            return found if found is not None and found.get("synced") is True else None

        await eventually(settled, within=30, failure=lambda: "the job was never marked in line")
    job = await database.fax_jobs.find_one({"communication_id": communication_id})
    assert job["state"] == "done" and job["synced"] is True
    assert not {"due_at", "check_at", "sync_at"} & set(job), job
    record = await database.simulator_faxes.find_one({"reference": f"{job['_id']}:1"})
    assert record["done"] is True and "next_at" not in record
    indexes = {i["name"]: i for i in await (await database.fax_jobs.list_indexes()).to_list(None)}
    assert all(indexes[name].get("sparse") for name in ("due_at", "check_at", "sync_at"))


async def test_jobs_written_before_due_times_get_theirs_at_start(fax_settings: Settings, database: Any) -> None:
    settings = fax_settings.model_copy(update={"worker_enabled": False})
    async with serving_fax(settings, database) as api:
        body = {"media": MEDIA, "quality": "standard", "recipientNumber": "+16175550143", "sender": SEED_SENDER}
        communication_id = (await api.post("/fax/v1/send", json=body)).json()["communicationResource"]["id"]
    await database.fax_jobs.update_one(
        {"communication_id": communication_id},
        {"$unset": {"due_at": "", "check_at": ""}, "$set": {"synced": False}},
    )
    await database.fax_jobs.create_index([("state", 1), ("next_attempt_at", 1)], name="due")  # as the old version had
    async with serving_fax(settings, database):
        job = await database.fax_jobs.find_one({"communication_id": communication_id})
    assert job["due_at"] == job["next_attempt_at"] and job["check_at"] == job["kill_at"] and "sync_at" in job
    names = {index["name"] for index in await (await database.fax_jobs.list_indexes()).to_list(None)}
    assert "due" not in names, "done once: the next start reads no job for it"
