"""One worker carries several attempts at once, within its setting and the carrier's declared limits, and
several workers on one database still never take the same job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fhir_fax.fax.pacing import Pace, slots
from fhir_fax.fax.transports.base import Capabilities, Submission
from fhir_fax.fax.transports.simulator import Simulator
from fhir_fax.fax.worker import Worker
from fhir_fax.runtime import Runtime
from fhir_fax.settings import Settings

from helpers import MEDIA, SEED_SENDER, serving_fax

FAST = {"simulator_speed": 1000.0, "worker_poll_seconds": 0.02, "worker_enabled": False}


class Gathering(Simulator):
    """The simulator, holding every submission until ``expected`` of them are in hand at once."""

    def __init__(self, database: Any, expected: int, capabilities: Capabilities) -> None:
        super().__init__(database, speed=1000.0)
        self.capabilities = capabilities  # type: ignore[misc]
        self.expected = expected
        self.waiting = 0
        self.most = 0
        self.together = asyncio.Event()

    async def submit(self, submission: Submission) -> str:
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        if self.waiting >= self.expected:
            self.together.set()
        await self.together.wait()
        self.waiting -= 1
        return await super().submit(submission)


@pytest.fixture
async def api(fax_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serving_fax(fax_settings.model_copy(update=FAST), database) as http:
        yield http


def worker_for(settings: Settings, database: Any, transport: Any, concurrency: int) -> Worker:
    runtime = Runtime.build(settings.model_copy(update={**FAST, "worker_concurrency": concurrency}), database)
    return Worker(runtime.settings, runtime.outbox, runtime.tracker, transport, runtime.z3)


async def send(api: httpx.AsyncClient, count: int) -> list[str]:
    body = {"media": MEDIA, "quality": "standard", "recipientNumber": "+16175550143", "sender": SEED_SENDER}
    answers = [await api.post("/fax/v1/send", json=body) for _ in range(count)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return [a.json()["communicationResource"]["id"] for a in answers]


async def test_one_worker_hands_several_faxes_over_at_once(
    api: httpx.AsyncClient, fax_settings: Settings, database: Any
) -> None:
    """The carrier answers none of four submissions until all four are in hand: only concurrency gets past it."""
    await send(api, 4)
    carrier = Gathering(database, 4, Capabilities(takes_tiff=True))
    worker = worker_for(fax_settings, database, carrier, concurrency=4)
    assert await asyncio.wait_for(worker.step(), timeout=60) is True  # the bound only keeps a broken build from hanging
    assert carrier.most == 4
    assert await database.fax_jobs.count_documents({"state": "submitted"}) == 4
    assert await database.simulator_faxes.count_documents({}) == 4, "each handed over once"


async def test_the_carriers_declared_concurrency_bounds_the_worker(
    api: httpx.AsyncClient, fax_settings: Settings, database: Any
) -> None:
    await send(api, 5)
    carrier = Gathering(database, 2, Capabilities(takes_tiff=True, max_concurrency=2))
    worker = worker_for(fax_settings, database, carrier, concurrency=8)
    assert worker.slots == 2
    assert await worker.step() is True
    assert await database.fax_jobs.count_documents({"state": "submitted"}) == 2, "two at a time, not eight"
    assert await database.fax_jobs.count_documents({"state": "queued"}) == 3
    assert carrier.most == 2


async def test_workers_on_one_database_never_take_the_same_job(
    api: httpx.AsyncClient, fax_settings: Settings, database: Any
) -> None:
    await send(api, 9)
    workers = [worker_for(fax_settings, database, Simulator(database, speed=1000.0), concurrency=4) for _ in range(3)]
    for _ in range(3):
        await asyncio.gather(*(w.step() for w in workers))
    jobs = await database.fax_jobs.find({}).to_list(None)
    assert [j["state"] for j in jobs] == ["submitted"] * 9
    references = [r["reference"] for r in await database.simulator_faxes.find({}).to_list(None)]
    assert sorted(references) == sorted(f"{j['_id']}:1" for j in jobs), "each attempt handed over exactly once"


async def test_the_worker_runs_attempts_in_tasks_up_to_its_slots(
    api: httpx.AsyncClient, fax_settings: Settings, database: Any
) -> None:
    """Under ``run`` every fax is delivered with several attempts in flight; the carrier saw them together."""
    communication_ids = await send(api, 6)
    carrier = Gathering(database, 3, Capabilities(takes_tiff=True))
    worker = worker_for(fax_settings, database, carrier, concurrency=3)
    running = asyncio.create_task(worker.run())
    try:
        for communication_id in communication_ids:
            while (await database.fax_jobs.find_one({"communication_id": communication_id}))["state"] != "done":
                assert not running.done(), running
                await asyncio.sleep(0.05)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert carrier.most == 3
    statuses = [j["status"] for j in await database.fax_jobs.find({}).to_list(None)]
    assert statuses == ["DELIVERED"] * 6


def test_slots_are_the_smaller_of_the_setting_and_the_carriers_limit() -> None:
    assert slots(8, Capabilities()) == 8
    assert slots(8, Capabilities(max_concurrency=3)) == 3
    assert slots(2, Capabilities(max_concurrency=3)) == 2


async def test_submissions_are_spaced_by_the_declared_rate() -> None:
    """A clock that moves only when slept on: the pace asks to sleep exactly what the rate leaves."""
    moment = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        moment[0] += seconds

    pace = Pace(4.0, clock=lambda: moment[0], sleep=sleep)
    for _ in range(3):
        await pace.wait()
    assert slept == [0.25, 0.25], "the first goes at once, each next a quarter second later"
    moment[0] += 10
    await pace.wait()
    assert slept == [0.25, 0.25], "after a lull, at once"
    unlimited = Pace(None, clock=lambda: moment[0], sleep=sleep)
    await unlimited.wait()
    await unlimited.wait()
    assert slept == [0.25, 0.25]
