"""Delivery does less work per fax: the worker is woken by a send, renews a lease only when it must, and
subscription delivery reads and clears the versions of a burst of writes together. A start reads no stored
resource once its database has been migrated.

Each behaviour is checked by what it must still guarantee (the fax is delivered, a lapsed lease still stops
the hand-over, a version written during a pass keeps its mark) as well as by the work saved.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from fhir_fax.fax.status import StatusEvent
from fhir_fax.fax.worker import create_worker
from fhir_fax.fhir.store import MIGRATIONS
from fhir_fax.runtime import Runtime
from fhir_fax.settings import Settings
from fhir_fax.subscriptions import dispatch as dispatch_module
from fhir_fax.subscriptions.queue import NOTIFICATIONS
from fhir_fax.subscriptions.resource import check_subscription

from helpers import MEDIA, SEED_SENDER, Commands, outbound_status, serving_fax, wait_final

BODY = {"media": MEDIA, "quality": "standard", "recipientNumber": "+16175550143", "sender": SEED_SENDER}


async def test_a_send_wakes_the_worker_of_its_process(fax_settings: Settings, database: Any) -> None:
    """The worker polls once a minute here: a fax delivered within the test's limit was taken on the wake-up."""
    settings = fax_settings.model_copy(update={"simulator_speed": 1000.0, "worker_poll_seconds": 60.0})
    async with serving_fax(settings, database) as api:
        await asyncio.sleep(0.3)  # the worker's first look (at start) is over: it waits for its poll or a wake-up
        response = await api.post("/fax/v1/send", json=BODY)
        assert response.status_code == 200, response.text
        final = await wait_final(api, response.json()["communicationResource"]["id"], within=30)
    assert final["status"] == "completed"


async def test_a_quick_hand_over_writes_no_lease_renewal(fax_settings: Settings, database: Any) -> None:
    settings = fax_settings.model_copy(update={"worker_enabled": False, "simulator_speed": 1000.0})
    async with serving_fax(settings, database) as api:
        communication_id = (await api.post("/fax/v1/send", json=BODY)).json()["communicationResource"]["id"]
        worker = create_worker(settings, database)
        renewals: list[bool] = []
        renew = worker.outbox.renew

        async def counted(*args: Any) -> bool:
            renewals.append(await renew(*args))
            return renewals[-1]

        worker.outbox.renew = counted  # type: ignore[method-assign]
        assert await worker.step() is True
        job = await database.fax_jobs.find_one({"communication_id": communication_id})
        assert job["state"] == "submitted" and renewals == [], "a whole lease was left: nothing to renew"


async def test_a_hand_over_after_half_the_lease_renews_it_first(fax_settings: Settings, database: Any) -> None:
    """Preparing took more than half the lease: the renewal is written (and checked) before the hand-over."""
    settings = fax_settings.model_copy(update={"worker_enabled": False, "lease_seconds": 1.0})
    async with serving_fax(settings, database) as api:
        communication_id = (await api.post("/fax/v1/send", json=BODY)).json()["communicationResource"]["id"]
        worker = create_worker(settings, database)
        renewals: list[bool] = []
        renew, prepare = worker.outbox.renew, worker.prepare

        async def counted(*args: Any) -> bool:
            renewals.append(await renew(*args))
            return renewals[-1]

        async def slowly(job: Any, reference: str) -> Any:
            submission = await prepare(job, reference)
            await asyncio.sleep(0.6)
            return submission

        worker.outbox.renew = counted  # type: ignore[method-assign]
        worker.prepare = slowly  # type: ignore[method-assign]
        assert await worker.step() is True
        job = await database.fax_jobs.find_one({"communication_id": communication_id})
        assert renewals == [True] and job["state"] == "submitted"


@pytest.fixture
async def watched(mongo_uri: str, settings: Settings) -> AsyncIterator[tuple[Runtime, Any, Commands]]:
    """A runtime (its dispatcher driven by hand) on a client that records the commands it sends."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    commands = Commands(name)
    client: Any = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[commands])
    runtime = Runtime.build(settings, client[name])
    await runtime.prepare()
    yield runtime, client[name], commands
    await runtime.close()
    await client.drop_database(name)
    await client.close()


async def subscribe(runtime: Runtime, criteria: str) -> str:
    resource = {"resourceType": "Subscription", "status": "requested", "reason": "tests", "criteria": criteria,
                "channel": {"type": "rest-hook", "endpoint": "https://hooks.example.com/x"}}  # fmt: skip
    checked, _ = check_subscription(resource, runtime.registry, [])
    stored = await runtime.store.create(checked, private={"client": "test-admin", "scopes": "", "patient": None})
    await runtime.subscriptions.dispatcher.step()  # the Subscription's own version
    return str(stored["id"])


def communication(category: str) -> dict[str, Any]:
    return {"resourceType": "Communication", "status": "completed", "category": [{"coding": [{"code": category}]}]}


async def test_a_burst_of_writes_is_matched_with_one_lookup_and_cleared_with_one_write(
    watched: tuple[Runtime, Any, Commands],
) -> None:
    runtime, database, commands = watched
    category = f"burst-{uuid.uuid4().hex[:6]}"
    subscription_id = await subscribe(runtime, f"Communication?category={category}")
    # Its first notification, alone: the event counter is made by an upsert, which the embedded database may
    # answer with nothing when two make it at once (that resource is then dispatched again by the next pass).
    matching = [await runtime.store.create(communication(category))]
    assert await runtime.subscriptions.dispatcher.step() == 1
    matching += [await runtime.store.create(communication(category)) for _ in range(4)]
    for _ in range(5):
        await runtime.store.create(communication("other"))
    commands.seen.clear()
    assert await runtime.subscriptions.dispatcher.step() == 9
    queued = await database[NOTIFICATIONS].find({"subscription": subscription_id}).to_list(None)
    assert sorted(n["resource"] for n in queued) == sorted(f"Communication/{c['id']}" for c in matching)
    assert await database["Communication"].count_documents({"_fhirfax.pending": {"$gte": 1}}) == 0
    assert commands.seen.count(("find", "Subscription")) == 2, "the marked Subscriptions, and one match lookup"
    assert commands.seen.count(("update", "Communication")) == 1, "every mark (all at version 1) in one write"


async def test_marks_of_resources_at_different_versions_are_cleared_with_one_write(
    watched: tuple[Runtime, Any, Commands],
) -> None:
    """A fax's Communications are at different versions (QUEUED, PROCESSING, DELIVERED ...): still one write."""
    runtime, database, commands = watched
    category = f"versions-{uuid.uuid4().hex[:6]}"
    await subscribe(runtime, f"Communication?category={category}")
    written = [await runtime.store.create(communication(category)) for _ in range(3)]
    for index, resource in enumerate(written):
        for _ in range(index):  # versions 1, 2 and 3
            await runtime.store.modify("Communication", resource["id"], lambda c: {**c, "note": [{"text": "again"}]})
    commands.seen.clear()
    assert await runtime.subscriptions.dispatcher.step() == 3
    assert commands.seen.count(("update", "Communication")) == 1, "one write clears marks at versions 1, 2 and 3"
    assert await database["Communication"].count_documents({"_fhirfax.pending": {"$gte": 1}}) == 0


async def test_a_version_written_during_a_pass_keeps_its_mark(watched: tuple[Runtime, Any, Commands]) -> None:
    """The batch's marks are cleared by version: one written after the pass read the resource stays marked,
    and the next pass queues its notification."""
    runtime, database, _ = watched
    category = f"race-{uuid.uuid4().hex[:6]}"
    subscription_id = await subscribe(runtime, f"Communication?category={category}")
    created = await runtime.store.create(communication(category))
    dispatcher = runtime.subscriptions.dispatcher
    read = await database["Communication"].find_one({"_id": created["id"]})
    await dispatcher.dispatch("Communication", read, clear=False)  # the pass queued version 1 ...
    await runtime.store.update("Communication", created["id"], {**communication(category), "id": created["id"]})
    await dispatcher._clear("Communication", [read])  # ... and clears after version 2 was written
    assert (await database["Communication"].find_one({"_id": created["id"]}))["_fhirfax"]["pending"] == 1
    await dispatcher.step()
    queued = await database[NOTIFICATIONS].find({"subscription": subscription_id}).to_list(None)
    assert sorted(n["version"] for n in queued) == [1, 2], "each version once"
    assert "pending" not in (await database["Communication"].find_one({"_id": created["id"]}))["_fhirfax"]


async def test_news_of_a_fax_this_process_handed_over_is_applied_without_reading_the_job_back(
    fax_settings: Settings, mongo_uri: str
) -> None:
    name = f"t_{uuid.uuid4().hex[:16]}"
    commands = Commands(name)
    client: Any = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[commands])
    database = client[name]
    settings = fax_settings.model_copy(update={"worker_enabled": False, "simulator_speed": 0.001})
    try:
        async with serving_fax(settings, database) as api:
            communication_id = (await api.post("/fax/v1/send", json=BODY)).json()["communicationResource"]["id"]
            worker = create_worker(settings, database)
            assert await worker.step() is True
            job = await database.fax_jobs.find_one({"communication_id": communication_id})
            commands.seen.clear()
            moment = datetime.now(UTC)
            assert await worker.tracker.apply(StatusEvent(f"{job['_id']}:1", "SENDING", moment)) is True
            assert ("find", "fax_jobs") not in commands.seen, "the job as handed over, plus the change"
            assert await worker.tracker.apply(StatusEvent(f"{job['_id']}:1", "DELIVERED", moment, pages=2)) is True
            assert ("find", "fax_jobs") not in commands.seen
            final = await wait_final(api, communication_id)
            stored = await database.fax_jobs.find_one({"communication_id": communication_id})
        assert final["status"] == "completed" and stored["state"] == "done" and stored["synced"] is True
        assert stored["pages"] == 2 and stored["position"] == 13
    finally:
        await client.drop_database(name)
        await client.close()


async def test_news_applied_by_another_process_meanwhile_is_read_back(fax_settings: Settings, database: Any) -> None:
    """This process's picture of the job is stale (another one applied SENDING): its compare-and-set misses, the
    job is read back, the DELIVERED news still applies once and the late SENDING changes nothing."""
    settings = fax_settings.model_copy(update={"worker_enabled": False, "simulator_speed": 0.001})
    async with serving_fax(settings, database) as api:
        communication_id = (await api.post("/fax/v1/send", json=BODY)).json()["communicationResource"]["id"]
        worker = create_worker(settings, database)
        assert await worker.step() is True
        fax_id = (await database.fax_jobs.find_one({"communication_id": communication_id}))["_id"]
        elsewhere = create_worker(settings, database)  # its own outbox: it knows nothing of the hand-over
        moment = datetime.now(UTC)
        assert await elsewhere.tracker.apply(StatusEvent(f"{fax_id}:1", "SENDING", moment)) is True
        assert await worker.tracker.apply(StatusEvent(f"{fax_id}:1", "DELIVERED", moment, pages=2)) is True
        assert await worker.tracker.apply(StatusEvent(f"{fax_id}:1", "SENDING", moment)) is False
        final = await wait_final(api, communication_id)
        history = (await api.get(f"/fhir/Communication/{communication_id}/_history")).json()
    assert final["status"] == "completed"
    statuses = [outbound_status(entry["resource"]) for entry in reversed(history["entry"])]
    assert statuses == ["QUEUED", "PROCESSING", "SENDING", "DELIVERED"]


async def test_a_start_on_a_migrated_database_reads_no_resource(settings: Settings, mongo_uri: str) -> None:
    """The start-up migration of creation and sort keys reads a type's documents only until it is recorded:
    on the embedded database its queries read (and hold) the whole collection."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    commands = Commands(name)
    client: Any = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[commands])
    try:
        first = Runtime.build(settings, client[name])
        await first.prepare()
        await first.store.create(communication("stored"))
        await first.close()
        commands.seen.clear()
        again = Runtime.build(settings, client[name])
        await again.prepare()
        await again.close()
        assert ("find", "Communication") not in commands.seen
        assert ("find", "Communication_history") not in commands.seen
        assert ("find", MIGRATIONS) in commands.seen, "one read of what was migrated"
    finally:
        await client.drop_database(name)
        await client.close()


async def test_a_failed_history_read_of_a_batch_loses_no_notification(
    watched: tuple[Runtime, Any, Commands], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's one history read fails: each resource then reads its own versions and Subscriptions, and its
    notifications are queued (or its mark stays), never dropped with the mark cleared."""
    runtime, database, _ = watched
    category = f"unread-{uuid.uuid4().hex[:6]}"
    subscription_id = await subscribe(runtime, f"Communication?category={category}")
    first = await runtime.store.create(communication(category))
    await runtime.store.modify("Communication", first["id"], lambda c: {**c, "note": [{"text": "v2"}]})
    second = await runtime.store.create(communication(category))
    failures: list[str] = []
    real = dispatch_module.history_collection

    def failing_once(resource_type: str) -> str:
        if not failures:
            failures.append(resource_type)
            raise ConnectionError("the batch's history read failed")
        return real(resource_type)

    monkeypatch.setattr(dispatch_module, "history_collection", failing_once)
    assert await runtime.subscriptions.dispatcher.step() == 2
    assert failures == ["Communication"], "the batch read failed"
    queued = await database[NOTIFICATIONS].find({"subscription": subscription_id}).to_list(None)
    expected = [(f"Communication/{first['id']}", 1), (f"Communication/{first['id']}", 2)]
    assert sorted((n["resource"], n["version"]) for n in queued) == sorted(
        [*expected, (f"Communication/{second['id']}", 1)]
    )
