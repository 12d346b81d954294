"""Received faxes through Telnyx (the emulator, webhooks signed as Telnyx signs them) and through the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient, MongoClient
from test_telnyx import PUBLIC_B64, emulator  # noqa: F401 (a fixture)

from fhir_fax.fax.transports.base import InboundNotice, MediaRefused
from fhir_fax.fax.transports.telnyx.inbound import fetch_media
from fhir_fax.settings import Settings

from helpers import FIXTURES, eventually
from inbound_helpers import CALLER, OUR_NUMBER, REFERRAL, fax_tiff, get_page_count, get_pdf_url, inbound_counts
from processes import CLI, FaxServer, ServerProcess


class Inbound:
    def __init__(self, server: FaxServer, database: Any, carrier: ServerProcess) -> None:
        self.server, self.database, self.emulator = server, database, carrier

    async def arrive(self, document: bytes, **more: Any) -> dict[str, Any]:
        body = {
            "from": CALLER,
            "to": OUR_NUMBER,
            "webhook_url": f"{self.server.url}/fax/webhooks/telnyx",
            "document": base64.b64encode(document).decode(),
            **more,
        }
        async with httpx.AsyncClient(timeout=60) as http:
            response = await http.post(f"{self.emulator.url}/_control/inbound", json=body)
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer

    async def communications(self, caller: str = CALLER) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.server.url, headers=self.server.headers) as http:
            found = await http.get("/fhir/Communication", params={"sender-number": caller, "_count": "100"})
            return [e["resource"] for e in found.json().get("entry", [])]

    async def download(self, url: str) -> bytes:
        async with httpx.AsyncClient(base_url=self.server.url, headers=self.server.headers) as http:
            path = url.split("/v1/z3/", 1)[1] if "/v1/z3/" in url else url.removeprefix("z3://")
            signed = await http.post(f"/v1/z3/{path}", json={"action": "download"})
            return (await http.get(signed.json()["signedUrl"])).content


@pytest.fixture(scope="module")
def receiving_server(
    tmp_path_factory: pytest.TempPathFactory,
    mongo_uri: str,
    emulator: ServerProcess,  # noqa: F811
) -> Iterator[tuple[FaxServer, str]]:
    """One server for the module (tests use their own callers and fax ids), receiving from the emulator."""
    name = f"inbound_{uuid.uuid4().hex[:8]}"
    env = {
        "FHIR_FAX_MONGODB_URI": mongo_uri,
        "FHIR_FAX_DATABASE_NAME": name,
        "FHIR_FAX_BASE_URL": "http://127.0.0.1:{port}",
        "FHIR_FAX_TELNYX_PUBLIC_KEY": PUBLIC_B64,
        "FHIR_FAX_INBOUND_MEDIA_HOSTS": json.dumps([emulator.url]),
        "FHIR_FAX_WORKER_ENABLED": "false",
    }
    server = FaxServer(tmp_path_factory.mktemp("inbound") / "data", "--load-fixtures", env=env)
    onboarded = httpx.post(f"{server.url}/fax/v1/onboard", json={"faxNumber": OUR_NUMBER}, headers=server.headers)
    assert onboarded.status_code == 200, onboarded.text
    try:
        yield server, name
    finally:
        server.stop()
        with MongoClient(mongo_uri) as client:
            client.drop_database(name)


@pytest.fixture
async def inbound(
    receiving_server: tuple[FaxServer, str],
    mongo_uri: str,
    emulator: ServerProcess,  # noqa: F811
) -> AsyncIterator[Inbound]:
    server, name = receiving_server
    client = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        yield Inbound(server, client[name], emulator)
    finally:
        await client.close()


async def test_repeated_and_out_of_order_webhooks_make_one_communication(inbound: Inbound, mongo_uri: str) -> None:
    result = await inbound.arrive(REFERRAL, pages=3)
    answers = [(a["event_type"], a["status"], json.loads(a["answer"])["status"]) for a in result["answers"]]
    assert sorted(answers[:2]) == [
        ("fax.received", 200, "duplicate"),
        ("fax.received", 200, "received"),
    ], "the two simultaneous deliveries: one receives, the other finds it received"
    assert answers[2:] == [
        ("fax.media.processing.started", 200, "ignored"),
        ("fax.media.processing.started", 200, "duplicate"),
        ("fax.received", 200, "duplicate"),  # announced again under a new event id
    ]
    [communication] = await inbound.communications()
    assert communication["status"] == "completed" and get_page_count(communication) == 3
    assert communication["recipient"] == [{"reference": "Organization/riverside-family-medicine"}]
    assert await inbound.download(get_pdf_url(communication) or "") == REFERRAL
    fax = {"_id": f"telnyx:{result['fax_id']}"}
    assert await inbound.database["inbound_faxes"].count_documents(fax) == 1
    focus = {"focus.reference": f"Communication/{communication['id']}"}
    assert await inbound.database["Task"].count_documents(focus) == 1

    async def suggested() -> list[str] | None:  # made after the webhook was answered
        task = await inbound.database["Task"].find_one(focus)
        found = [i["valueReference"]["reference"] for i in (task or {}).get("input", [])]
        return found or None

    found = await eventually(suggested, within=60, failure=lambda: "no suggestion on the Task")
    assert found[0] == "Patient/maria-lopez"
    # the command line joins the running server's database and receives the same way
    caller = f"+1415555{uuid.uuid4().int % 10_000:04d}"
    letter = str(FIXTURES / "referral-letter.pdf")
    name = inbound.database.name
    args = ("inbound", "simulate", letter, "--from", caller, "--mongodb-uri", mongo_uri, "--to")
    done = await asyncio.to_thread(run_cli, *args, OUR_NUMBER, database=name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("received: Communication/")
    assert f"Inbound fax from {caller} (3 pages)" in done.stdout
    [communication] = await inbound.communications(caller)  # the server sees what the command stored
    assert await inbound.download(get_pdf_url(communication) or "") == REFERRAL
    refused = await asyncio.to_thread(run_cli, *args, "+16175550199", database=name)
    assert refused.returncode == 1 and "is not a fax number onboarded" in refused.stderr
    assert len(await inbound.communications(caller)) == 1


async def test_a_partial_tiff_is_kept_with_its_original_and_redirects_are_refused(inbound: Inbound) -> None:
    caller = f"+1312555{uuid.uuid4().int % 10_000:04d}"
    tiff = fax_tiff(pages=2)
    await inbound.arrive(tiff, content_type="image/tiff", partial=True, **{"from": caller})
    [communication] = await inbound.communications(caller)
    status = next(e for e in communication["extension"] if e["url"].endswith("inbound-fax-status"))
    assert status["valueCodeableConcept"]["coding"][0]["code"] == "PARTIAL"
    assert communication["note"][0]["text"].startswith("Only part of this fax came through")
    assert (await inbound.download(get_pdf_url(communication) or "")).startswith(b"%PDF-")
    assert await inbound.download(communication["payload"][1]["contentAttachment"]["url"]) == tiff
    # media behind a redirect is not fetched: refused, nothing stored
    fax_id = str(uuid.uuid4())
    before = await inbound_counts(inbound.database)
    result = await inbound.arrive(REFERRAL, fax_id=fax_id, media_url=f"{inbound.emulator.url}/media-redirect/{fax_id}")
    refusals = [a for a in result["answers"] if a["event_type"] == "fax.received"]
    assert {a["status"] for a in refusals} == {422}
    assert all("redirects are not followed" in json.loads(a["answer"])["message"] for a in refusals)
    assert await inbound_counts(inbound.database) == before


async def test_media_over_the_size_limit_is_refused(emulator: ServerProcess) -> None:  # noqa: F811
    fax_id = str(uuid.uuid4())
    async with httpx.AsyncClient(timeout=30) as http:  # a fax the emulator holds, announced to nobody
        body = {"from": CALLER, "to": OUR_NUMBER, "webhook_url": f"{emulator.url}/ready", "fax_id": fax_id}
        await http.post(
            f"{emulator.url}/_control/inbound", json={**body, "document": base64.b64encode(REFERRAL).decode()}
        )
    settings = Settings(inbound_media_hosts=[emulator.url], inbound_max_bytes=1000, _env_file=None)
    notice = InboundNotice(fax_id, CALLER, OUR_NUMBER, datetime.now(UTC), media_url=f"{emulator.url}/media/{fax_id}")
    with pytest.raises(MediaRefused, match="over the 1000 allowed"):
        await fetch_media(notice, settings)
    allowed = settings.model_copy(update={"inbound_max_bytes": len(REFERRAL)})
    assert (await fetch_media(notice, allowed)).data == REFERRAL


def run_cli(*args: str, database: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FHIR_FAX_DATABASE_NAME": database}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
