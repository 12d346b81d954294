"""Over a real server process: faxes walk through their statuses, failures stop with their codes, logs say which fax."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import wait_final_at
from processes import FaxServer

SENDER = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"
NUMBERS = {
    "+16175550143": ("completed", None),
    "+16175550006": ("completed", None),
    "+16175550002": ("stopped", "BUSY"),
    "+16175550003": ("stopped", "NO_ANSWER"),
    "+16175550004": ("stopped", "FAILED"),
    "+16175550486": ("stopped", "486"),
    "+16175550005": ("stopped", "UNKNOWN"),
}


@pytest.fixture
def server(tmp_path: Path, mongo_uri: str) -> Iterator[FaxServer]:
    env = {
        "FHIR_FAX_MONGODB_URI": mongo_uri,
        "FHIR_FAX_DATABASE_NAME": f"e2e_{uuid.uuid4().hex[:8]}",
        # 50x: the carrier's steps come 40 ms, 80 ms and 0.7 s after the hand-over, each pushed on its own (at
        # 1000x, a step already superseded when the news is pushed is not shown: see the simulator).
        "FHIR_FAX_SIMULATOR_SPEED": "50",
        "FHIR_FAX_WORKER_POLL_SECONDS": "0.05",
        "FHIR_FAX_RETRY_DELAY_SECONDS": "0.05",
        "FHIR_FAX_LOG_FORMAT": "json",
    }
    process = FaxServer(tmp_path / "data", "--load-fixtures", env=env)
    yield process
    process.stop()


def status_codes(http: httpx.Client, communication_id: str) -> list[str]:
    history = http.get(f"/fhir/Communication/{communication_id}/_history").json()
    return [
        next(e for e in entry["resource"]["extension"] if e["url"].endswith("outbound-fax-status"))[
            "valueCodeableConcept"
        ]["coding"][0]["code"]
        for entry in reversed(history["entry"])
    ]


def test_faxes_reach_their_end_over_a_real_server(server: FaxServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10, headers=server.headers) as http:
        assert http.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"}).status_code == 200
        sent = {}
        for number in NUMBERS:
            body = {
                "media": "z3://fixtures/referral-letter.pdf",
                "quality": "standard",
                "recipientNumber": number,
                "sender": SENDER,
            }
            sent[number] = http.post("/fax/v1/send", json=body).json()["communicationResource"]["id"]
        finals = dict(zip(sent, wait_final_at(server.url, server.headers, list(sent.values())), strict=True))
        assert set(finals) == set(NUMBERS), "every fax finished"
        for number, (status, code) in NUMBERS.items():
            assert finals[number]["status"] == status, number
            if code:
                assert finals[number]["statusReason"]["coding"][0]["code"] == code
        assert status_codes(http, sent["+16175550143"]) == ["QUEUED", "PROCESSING", "SENDING", "DELIVERED"]
    records = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    fax_lines = [r for r in records if "fax" in r]
    assert fax_lines, "fax events are logged as JSON"
    assert all(isinstance(r["attempt"], int) and r["fax"] for r in fax_lines)
    assert {r["status"] for r in fax_lines if "status" in r} >= {"SENDING", "DELIVERED"}
