"""The unmodified Oystehr SDK (Node) against a real fhir-fax server process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import FIXTURES, SEED_RECIPIENT, SENDER_NUMBER, assert_matches_seed
from processes import FaxServer

SDK_DIR = Path(__file__).resolve().parents[2] / "node-clients"


@pytest.fixture
async def server_and_database(tmp_path: Path, mongo_uri: str) -> AsyncIterator[tuple[FaxServer, Any]]:
    name = f"sdk_{uuid.uuid4().hex[:8]}"
    # No worker: the SDK reads each fax back as sent (a send wakes the worker, which would move it on first).
    env = {"FHIR_FAX_MONGODB_URI": mongo_uri, "FHIR_FAX_DATABASE_NAME": name, "FHIR_FAX_WORKER_ENABLED": "false"}
    server = FaxServer(tmp_path / "data", "--load-fixtures", env=env)
    client = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        yield server, client[name]
    finally:
        server.stop()
        await client.drop_database(name)
        await client.close()


async def test_the_sdk_sends_reads_back_and_retries_without_a_second_fax(
    server_and_database: tuple[FaxServer, Any],
) -> None:
    server, database = server_and_database
    pdf = (FIXTURES / "referral-letter.pdf").read_bytes()
    await Z3Store(database).put(Z3Location("letters", "referral.pdf"), pdf, "application/pdf")
    async with httpx.AsyncClient(headers=server.headers) as http:
        assert (await http.post(f"{server.url}/fax/v1/onboard", json={"faxNumber": SENDER_NUMBER})).status_code == 200
    token = server.headers["authorization"].removeprefix("Bearer ")
    media = f"{server.url}/v1/z3/letters/referral.pdf"
    run = await asyncio.to_thread(
        subprocess.run,
        ["node", "scenario.mjs", server.url, media, str(FIXTURES / "referral-letter.pdf"), token],
        cwd=SDK_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)

    assert result["roundTrip"] is True, "uploadFile then downloadFile returns the same bytes"
    assert [o["key"] for o in result["listed"]] == ["referrals/letter.pdf"]
    uploaded = result["uploadedFax"]["payload"][0]["contentAttachment"]
    assert (uploaded["contentType"], uploaded["extension"][0]["valueInteger"]) == ("application/pdf", 3)
    assert result["m2m"]["created"]["name"] == "sdk-client" and "secret" not in result["m2m"]["created"]
    assert len(result["m2m"]["secret"]) > 30
    assert result["m2m"]["me"]["name"] == "bootstrap admin"
    assert result["onboard"] == {"faxNumber": SENDER_NUMBER}
    assert result["config"] == {"configured": True, "faxNumbers": [SENDER_NUMBER]}
    assert_matches_seed(result["sent"], media=media)
    assert result["sent"]["recipient"] == [{"reference": SEED_RECIPIENT}]
    assert result["readBack"] == result["sent"]
    assert result["byNumber"]["recipient"] == [{"reference": "#12223334444"}]
    assert result["byNumber"]["subject"] == {"reference": "Patient/maria-lopez"}

    # The SDK retried after a lost answer, with the same request id: still one fax.
    first_id, second_id = result["retryRequestIds"]
    assert first_id == second_id
    retried = await database.fax_jobs.find({"quality": "superfine"}).to_list(None)
    assert [job["communication_id"] for job in retried] == [result["retried"]["id"]]
    assert await database["Communication"].count_documents({}) == 4

    assert result["error"] == {
        "message": "Give exactly one of 'recipient' (a reference such as Practitioner/123) and 'recipientNumber' "
        "(an E.164 fax number); neither was given.",
        "code": 400,
    }
