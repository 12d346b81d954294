"""Clients written elsewhere (fhirpy, fhir-kit-client) page a patient's faxes while the simulator delivers them.

Every delivery step changes a fax (status, extensions, ``meta.lastUpdated``). Each client follows the server's
``next`` links to the end and must get every fax of the patient exactly once, run after run.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fhirpy import AsyncFHIRClient
from pymongo import AsyncMongoClient
from pypdf import PdfReader, PdfWriter

from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import FIXTURES, SEED_SENDER, SENDER_NUMBER
from processes import FaxServer

SDK_DIR = Path(__file__).resolve().parents[2] / "node-clients"
RUNS, FAXES, PAGE = 10, 30, 3


@pytest.fixture
async def server(tmp_path: Path, mongo_uri: str) -> AsyncIterator[FaxServer]:
    """A server whose simulator runs fast, with a one-page letter in Z3 (quick to render: many changes a second)."""
    name = f"clients_{uuid.uuid4().hex[:8]}"
    env = {
        "FHIR_FAX_MONGODB_URI": mongo_uri,
        "FHIR_FAX_DATABASE_NAME": name,
        "FHIR_FAX_SIMULATOR_SPEED": "1000",
        "FHIR_FAX_WORKER_POLL_SECONDS": "0.02",
    }
    process = FaxServer(tmp_path / "data", "--load-fixtures", env=env)
    client = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        letter = PdfWriter()
        letter.add_page(PdfReader(FIXTURES / "referral-letter.pdf").pages[0])
        one_page = io.BytesIO()
        letter.write(one_page)
        await Z3Store(client[name]).put(Z3Location("letters", "one-page.pdf"), one_page.getvalue(), "application/pdf")
        yield process
    finally:
        process.stop()
        await client.drop_database(name)
        await client.close()


async def send_faxes(http: httpx.AsyncClient, patient: str) -> list[str]:
    """``FAXES`` faxes for ``patient``; the simulator starts delivering them at once."""
    sent = []
    for n in range(FAXES):
        body = {
            "media": "z3://letters/one-page.pdf",
            "quality": "standard",
            "recipientNumber": f"+1617555{1000 + n:04d}",
            "sender": SEED_SENDER,
            "patient": f"Patient/{patient}",
        }
        response = await http.post("/fax/v1/send", json=body)
        assert response.status_code == 200, response.text
        sent.append(response.json()["communicationResource"]["id"])
    return sent


async def fhir_kit_ids(server: FaxServer, patient: str) -> list[str]:
    token = server.headers["authorization"].removeprefix("Bearer ")
    run = await asyncio.to_thread(
        subprocess.run,
        ["node", "fhir_kit_paging.mjs", f"{server.url}/fhir", token, patient, str(PAGE)],
        cwd=SDK_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["ids"]


async def fhirpy_ids(server: FaxServer, patient: str) -> list[str]:
    client = AsyncFHIRClient(f"{server.url}/fhir", authorization=server.headers["authorization"])
    faxes = await client.resources("Communication").search(patient=patient).limit(PAGE).fetch_all()
    return [fax.id for fax in faxes]


async def test_fhirpy_and_fhir_kit_client_get_every_fax_once_while_faxes_are_delivered(server: FaxServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=30) as http:
        assert (await http.post("/fax/v1/onboard", json={"faxNumber": SENDER_NUMBER})).status_code == 200
        patient = "maria-lopez"
        sent = await send_faxes(http, patient)
        # The worker delivers one fax after the other, three status changes each, over several seconds:
        # every run below pages while faxes are moving (measured: see the README's FHIR API section).
        for run in range(RUNS):
            by_fhirpy, by_fhir_kit = await asyncio.gather(fhirpy_ids(server, patient), fhir_kit_ids(server, patient))
            for name, got in (("fhirpy", by_fhirpy), ("fhir-kit-client", by_fhir_kit)):
                assert len(got) == len(set(got)), f"run {run}: {name} got {len(got) - len(set(got))} faxes twice"
                assert set(got) == set(sent), f"run {run}: {name} missed {len(set(sent) - set(got))} of {FAXES}"
            assert by_fhirpy == sent[::-1], "newest created first, whatever the deliveries did"


async def test_fhirpy_get_or_create_creates_once(server: FaxServer) -> None:
    client = AsyncFHIRClient(f"{server.url}/fhir", authorization=server.headers["authorization"])
    wanted = client.resource("Communication", status="completed", identifier=[{"system": "urn:test", "value": "42"}])
    outcomes = []
    search = client.resources("Communication").search(identifier="urn:test|42")
    for _ in range(2):
        fax, created = await search.get_or_create(wanted)
        outcomes.append((fax.id, created))
    assert [created for _, created in outcomes] == [True, False]
    assert outcomes[0][0] == outcomes[1][0]
    assert len(await client.resources("Communication").search(identifier="urn:test|42").fetch_all()) == 1
