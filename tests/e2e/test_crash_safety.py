"""Crash safety over real processes: workers killed at each step, a server killed with faxes in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from fhir_fax.fax.faults import CRASH_EXIT_CODE

from helpers import eventually
from processes import CLI, FaxServer

SENDER = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"
FAST_WORKER = {
    "FHIR_FAX_SIMULATOR_SPEED": "1000",
    "FHIR_FAX_WORKER_POLL_SECONDS": "0.05",
    "FHIR_FAX_LEASE_SECONDS": "1",
    "FHIR_FAX_RETRY_DELAY_SECONDS": "0.05",
    "FHIR_FAX_STUCK_AFTER_SECONDS": "1",
}


class Deployment:
    """A server (optionally without its own worker) and the database they share."""

    def __init__(self, tmp_path: Path, mongo_uri: str, database: Any, name: str) -> None:
        self.tmp_path, self.mongo_uri, self.database, self.name = tmp_path, mongo_uri, database, name
        self.env = {"FHIR_FAX_MONGODB_URI": mongo_uri, "FHIR_FAX_DATABASE_NAME": name, **FAST_WORKER}

    def server(self, *, worker: bool, speed: str = "1000") -> FaxServer:
        env = {**self.env, "FHIR_FAX_WORKER_ENABLED": str(worker).lower(), "FHIR_FAX_SIMULATOR_SPEED": speed}
        return FaxServer(self.tmp_path / f"server-{uuid.uuid4().hex[:6]}", "--load-fixtures", env=env)

    def worker(self, crash_at: str | None = None, speed: str = "1000") -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_FAX_")} | self.env
        env["FHIR_FAX_SIMULATOR_SPEED"] = speed
        if crash_at:
            env["FHIR_FAX_CRASH_AT"] = crash_at
        log = open(self.tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log", "wb")  # noqa: SIM115
        return subprocess.Popen([*CLI, "worker"], stdout=log, stderr=subprocess.STDOUT, env=env)

    async def wait_all_final(self, count: int, within: float = 60) -> list[dict[str, Any]]:
        """Every job done and its Communication written: read from the jobs, which outlive the crashed processes."""
        seen: list[dict[str, Any]] = []

        async def probe() -> list[dict[str, Any]] | None:
            seen[:] = await self.database.fax_jobs.find({}).to_list(None)
            finished = all(j["state"] == "done" and j.get("synced") for j in seen)
            return seen if len(seen) == count and finished else None

        def failure() -> str:
            return f"not all faxes finished: {[(j['_id'], j['state'], j['status']) for j in seen]}"

        return await eventually(probe, within=within, failure=failure)

    async def assert_each_attempt_submitted_once(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            for attempt in range(1, job["attempt"] + 1):
                reference = f"{job['_id']}:{attempt}"
                assert await self.database.simulator_faxes.count_documents({"reference": reference}) == 1, reference

    async def assert_communications_show_jobs(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            communication = await self.database.Communication.find_one({"_id": job["communication_id"]})
            expected = {"DELIVERED": "completed", "STOPPED": "stopped"}[job["status"]]
            assert communication["status"] == expected, (job["_id"], job["status"])


@pytest.fixture
async def deployment(tmp_path: Path, mongo_uri: str) -> AsyncIterator[Deployment]:
    name = f"crash_{uuid.uuid4().hex[:8]}"
    client = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield Deployment(tmp_path, mongo_uri, client[name], name)
    await client.drop_database(name)
    await client.close()


async def send(server: FaxServer, numbers: list[str]) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers) as http:
        assert (await http.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})).status_code == 200
        for number in numbers:
            body = {
                "media": "z3://fixtures/referral-letter.pdf",
                "quality": "standard",
                "recipientNumber": number,
                "sender": SENDER,
            }
            assert (await http.post("/fax/v1/send", json=body)).status_code == 200


@pytest.mark.parametrize("crash_at", ["after-claim", "after-submit", "after-record"])
async def test_a_worker_killed_at_each_step_loses_nothing_and_submits_nothing_twice(
    deployment: Deployment, crash_at: str
) -> None:
    server = deployment.server(worker=False)
    try:
        await send(server, ["+16175550143"])
        # A carrier clock of 10x makes the call last ~3.5 s, longer than the 1 s lease, so the
        # survivor takes the job over mid-call instead of only hearing the carrier's news.
        crashed = deployment.worker(crash_at=crash_at, speed="10")
        assert await asyncio.to_thread(crashed.wait, 60) == CRASH_EXIT_CODE
        survivor = deployment.worker(speed="10")
        try:
            jobs = await deployment.wait_all_final(1)
        finally:
            survivor.send_signal(signal.SIGTERM)
            await asyncio.to_thread(survivor.wait, 30)
    finally:
        server.stop()
    assert jobs[0]["status"] == "DELIVERED"
    await deployment.assert_each_attempt_submitted_once(jobs)
    await deployment.assert_communications_show_jobs(jobs)
    carrier_record = await deployment.database.simulator_faxes.find_one({"reference": f"{jobs[0]['_id']}:1"})
    if crash_at != "after-claim":
        # The crashed worker never recorded (after-submit) the carrier's id: the survivor asked the carrier.
        assert jobs[0]["carrier_ids"] == {"1": carrier_record["_id"]}


async def test_a_server_killed_with_faxes_in_flight_finishes_them_after_restart(deployment: Deployment) -> None:
    numbers = ["+16175550143", "+16175550144", "+16175550006", "+16175550004", "+16175550145"]
    server = deployment.server(worker=True, speed="20")  # slow enough that faxes are mid-call when killed
    await send(server, numbers)
    await asyncio.sleep(0.3)
    server.stop(signal.SIGKILL)
    restarted = deployment.server(worker=True, speed="20")
    try:
        jobs = await deployment.wait_all_final(len(numbers), within=90)
    finally:
        restarted.stop()
    by_number = {job["to_number"]: job["status"] for job in jobs}
    assert by_number == {
        "+16175550143": "DELIVERED", "+16175550144": "DELIVERED", "+16175550006": "DELIVERED",
        "+16175550004": "STOPPED", "+16175550145": "DELIVERED",
    }  # fmt: skip
    await deployment.assert_each_attempt_submitted_once(jobs)
    await deployment.assert_communications_show_jobs(jobs)


async def test_several_workers_share_the_work_without_doubling_it(deployment: Deployment) -> None:
    server = deployment.server(worker=False)
    numbers = [f"+1617555{n:04d}" for n in range(1010, 1025)]
    try:
        await send(server, numbers)
        workers = [deployment.worker() for _ in range(3)]
        try:
            jobs = await deployment.wait_all_final(len(numbers))
        finally:
            for process in workers:
                process.send_signal(signal.SIGTERM)
            for process in workers:
                await asyncio.to_thread(process.wait, 30)
    finally:
        server.stop()
    assert {job["status"] for job in jobs} == {"DELIVERED"}
    await deployment.assert_each_attempt_submitted_once(jobs)
    owners = {job.get("lease_owner") for job in jobs}
    assert owners == {None}, "every lease was released"
