"""The Telnyx adapter against a local emulator of Telnyx's documented API, both as real processes."""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pymongo import AsyncMongoClient

from helpers import eventually, wait_final
from processes import FaxServer, ServerProcess

EMULATOR = Path(__file__).resolve().parent.parent / "servers" / "telnyx_emulator.py"
SEED = "2a" * 32
PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEED))
PUBLIC_B64 = base64.b64encode(PRIVATE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
SENDER = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        [sys.executable, str(EMULATOR), "{port}", "emulator-key", SEED],
        log_dir=tmp_path_factory.mktemp("telnyx"),
        ready_path="/ready",
    )
    yield server
    server.stop()


class Setup:
    def __init__(self, server: FaxServer, database: Any, emulator: ServerProcess) -> None:
        self.server, self.database, self.emulator = server, database, emulator

    async def control(self, **settings: Any) -> None:
        async with httpx.AsyncClient() as http:
            await http.post(
                f"{self.emulator.url}/_control",
                json={"reject_next": 0, "lose_answer_next": 0, "drop_webhooks": False, "chaos": True, **settings},
            )

    async def log(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{self.emulator.url}/_control/log")).json()

    async def send(self, number: str) -> str:
        async with httpx.AsyncClient(base_url=self.server.url, headers=self.server.headers) as http:
            body = {
                "media": "z3://fixtures/referral-letter.pdf",
                "quality": "fine",
                "recipientNumber": number,
                "sender": SENDER,
            }
            response = await http.post("/fax/v1/send", json=body)
            assert response.status_code == 200, response.text
            return response.json()["communicationResource"]["id"]

    async def final(self, communication_id: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.server.url, headers=self.server.headers) as http:
            return await wait_final(http, communication_id)

    async def statuses(self, communication_id: str) -> list[str]:
        async with httpx.AsyncClient(base_url=self.server.url, headers=self.server.headers) as http:
            history = (await http.get(f"/fhir/Communication/{communication_id}/_history")).json()
        codes = []
        for entry in reversed(history["entry"]):
            extension = next(e for e in entry["resource"]["extension"] if e["url"].endswith("outbound-fax-status"))
            codes.append(extension["valueCodeableConcept"]["coding"][0]["code"])
        return codes


@pytest.fixture
async def telnyx(tmp_path: Path, mongo_uri: str, emulator: ServerProcess) -> AsyncIterator[Setup]:
    name = f"telnyx_{uuid.uuid4().hex[:8]}"
    env = {
        "FHIR_FAX_MONGODB_URI": mongo_uri,
        "FHIR_FAX_DATABASE_NAME": name,
        "FHIR_FAX_BASE_URL": "http://127.0.0.1:{port}",
        "FHIR_FAX_CARRIER": "telnyx",
        "FHIR_FAX_TELNYX_API_BASE": f"{emulator.url}/v2",
        "FHIR_FAX_TELNYX_API_KEY": "emulator-key",
        "FHIR_FAX_TELNYX_CONNECTION_ID": "fax-app-1",
        "FHIR_FAX_TELNYX_PUBLIC_KEY": PUBLIC_B64,
        "FHIR_FAX_WORKER_POLL_SECONDS": "0.05",
        "FHIR_FAX_RETRY_DELAY_SECONDS": "0.1",
        "FHIR_FAX_RETRY_BACKOFF": "1",
        "FHIR_FAX_STUCK_AFTER_SECONDS": "1",
    }
    server = FaxServer(tmp_path / "data", "--load-fixtures", env=env)
    client = AsyncMongoClient(mongo_uri, tz_aware=True)
    setup = Setup(server, client[name], emulator)
    await setup.control()
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers) as http:
        assert (await http.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})).status_code == 200
    try:
        yield setup
    finally:
        server.stop()
        await client.drop_database(name)
        await client.close()


async def test_a_fax_is_delivered_despite_out_of_order_and_duplicate_webhooks(telnyx: Setup) -> None:
    communication_id = await telnyx.send("+16175550143")
    final = await telnyx.final(communication_id)
    assert final["status"] == "completed"
    assert next(e["valueInteger"] for e in final["extension"] if e["url"].endswith("fax-pages")) == 3
    # The emulator sends "delivered" before "sending.started": the late SENDING must not move it back.
    assert await telnyx.statuses(communication_id) == ["QUEUED", "PROCESSING", "DELIVERED"]
    log = await telnyx.log()
    submission = log["submissions"][-1]
    assert (submission["quality"], submission["connection_id"], submission["to"]) == (
        "high",
        "fax-app-1",
        "+16175550143",
    )
    assert submission["media_url"].startswith(
        f"{telnyx.server.url}/v1/z3/fixtures/referral-letter.pdf?action=download&expires="
    )
    assert "&version=" in submission["media_url"], "the URL names the version checked at send, not the key's newest"
    assert log["media_fetches"][-1]["status"] == 200, "Telnyx fetched the document by its signed URL"
    answers = [json.loads(w["answer"])["status"] for w in log["webhooks"][-10:]]
    assert answers.count("duplicate") >= 4, "each webhook came twice; the second is recognised"
    assert all(w["status"] == 200 for w in log["webhooks"])


@pytest.mark.parametrize(
    ("number", "code", "text", "attempts"),
    [
        ("+16175550002", "BUSY", "The line was busy.", 3),
        ("+16175550004", "FAILED", "The destination number is not valid.", 1),
        ("+16175550005", "UNKNOWN", "The carrier reported a failure without a reason.", 1),
        ("+16175550007", "FAILED", "The call dropped during transmission.", 3),
    ],
)
async def test_failure_reasons_map_onto_failure_codes(
    telnyx: Setup, number: str, code: str, text: str, attempts: int
) -> None:
    final = await telnyx.final(await telnyx.send(number))
    assert final["status"] == "stopped"
    assert (final["statusReason"]["coding"][0]["code"], final["statusReason"]["text"]) == (code, text)
    submitted = [s for s in (await telnyx.log())["submissions"] if s["to"] == number]
    assert len(submitted) == attempts


async def test_a_429_from_telnyx_is_retried(telnyx: Setup) -> None:
    await telnyx.control(reject_next=1)
    final = await telnyx.final(await telnyx.send("+16175550150"))
    assert final["status"] == "completed"
    assert final["note"][0]["text"].startswith("Attempt 1 failed (CARRIER_UNAVAILABLE): Telnyx is unavailable (429)")


async def test_a_lost_answer_from_telnyx_never_sends_the_fax_twice(telnyx: Setup) -> None:
    """Telnyx took the fax but its answer was a 5xx: the carrier may have it, so it is asked before a resend."""
    await telnyx.control(lose_answer_next=1)
    communication_id = await telnyx.send("+16175550152")
    final = await telnyx.final(communication_id)
    assert final["status"] == "completed"
    submissions = [s for s in (await telnyx.log())["submissions"] if s["to"] == "+16175550152"]
    assert len(submissions) == 1, "the fax went to Telnyx once"
    job = await telnyx.database.fax_jobs.find_one({"communication_id": communication_id})
    assert job["attempt"] == 1 and list(job["carrier_ids"]) == ["1"]


async def test_lost_webhooks_are_reconciled_by_polling(telnyx: Setup) -> None:
    await telnyx.control(drop_webhooks=True)
    communication_id = await telnyx.send("+16175550151")
    final = await telnyx.final(communication_id)
    assert final["status"] == "completed"
    assert (await telnyx.statuses(communication_id))[-1] == "DELIVERED"
    assert not [w for w in (await telnyx.log())["webhooks"] if "+16175550151" in json.dumps(w)]


def signed(body: bytes, *, key: Ed25519PrivateKey = PRIVATE, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = base64.b64encode(key.sign(stamp.encode() + b"|" + body)).decode()
    return {"content-type": "application/json", "telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp}


async def test_webhooks_that_are_unsigned_tampered_stale_or_foreign_are_refused(telnyx: Setup) -> None:
    await telnyx.control(drop_webhooks=True)
    communication_id = await telnyx.send("+16175550152")

    async def submitted() -> dict[str, Any] | None:
        job: dict[str, Any] | None = await telnyx.database.fax_jobs.find_one({"communication_id": communication_id})
        return job if job is not None and job.get("carrier_ids") else None

    job = await eventually(submitted, within=30, failure=lambda: f"fax {communication_id} never reached Telnyx")
    state = base64.b64encode(f"{job['_id']}:1".encode()).decode()
    body = json.dumps(
        {"data": {"event_type": "fax.failed", "id": str(uuid.uuid4()), "occurred_at": "2026-11-24T10:00:00Z",
                  "payload": {"fax_id": job["carrier_ids"]["1"], "client_state": state, "status": "failed",
                              "failure_reason": "user_busy"}}}
    ).encode()  # fmt: skip
    url = f"{telnyx.server.url}/fax/webhooks/telnyx"
    tampered = body.replace(b"user_busy", b"destination_invalid")
    cases = [
        ({"content-type": "application/json"}, body, "not signed"),
        (signed(body), tampered, "does not match its body"),
        (signed(body, timestamp=int(time.time()) - 3600), body, "too old"),
        (signed(body, key=Ed25519PrivateKey.generate()), body, "does not match"),
    ]
    async with httpx.AsyncClient() as http:
        for headers, content, message in cases:
            response = await http.post(url, content=content, headers=headers)
            assert response.status_code == 401, response.text
            assert message in response.json()["message"]
        before = (
            await http.get(f"{telnyx.server.url}/fhir/Communication/{communication_id}", headers=telnyx.server.headers)
        ).json()
        assert before["status"] != "stopped", "no refused webhook was applied"
        accepted = await http.post(url, content=body, headers=signed(body))
        replayed = await http.post(url, content=body, headers=signed(body))
    assert accepted.json() == {"status": "applied"}
    assert replayed.json() == {"status": "duplicate"}


async def test_a_packet_reaches_telnyx_as_one_pdf_cover_first(telnyx: Setup) -> None:
    await telnyx.control(chaos=False)
    async with httpx.AsyncClient(base_url=telnyx.server.url, headers=telnyx.server.headers) as http:
        body = {
            "media": ["z3://fixtures/referral-letter.pdf", "z3://fixtures/referral-letter.pdf"],
            "quality": "fine",
            "recipientNumber": "+16175550143",
            "sender": SENDER,
            "coverNote": "Two copies of the referral.",
        }
        response = await http.post("/fax/v1/send", json=body)
        assert response.status_code == 200, response.text
    communication_id = response.json()["communicationResource"]["id"]
    final = await telnyx.final(communication_id)
    assert final["status"] == "completed"
    assert next(e["valueInteger"] for e in final["extension"] if e["url"].endswith("fax-pages")) == 7, "1 + 3 + 3"
    log = await telnyx.log()
    submission = log["submissions"][-1]
    url = submission["media_url"]
    assert ".fine.fax.pdf?action=download&expires=" in url and "&version=" in url
    assert log["media_fetches"][-1]["status"] == 200, "Telnyx fetched the packet by its signed URL"
