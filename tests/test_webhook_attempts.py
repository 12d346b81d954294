"""Signed Telnyx webhooks are matched to the recorded carrier attempt, and their values checked first.

The signature only says the event came from Telnyx. Whether it is about an attempt this server made
(the fax id Telnyx answered the submission with, recorded per attempt in ``carrier_ids``) and whether
its values make sense are separate questions, answered before anything reaches a Communication.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fhir_fax.fax.terminology import PAGES_EXTENSION
from fhir_fax.fax.worker import create_worker
from fhir_fax.fhir.models import format_instant, now
from fhir_fax.settings import Settings

from helpers import MEDIA, SEED_SENDER, serving_fax

KEY = Ed25519PrivateKey.generate()
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


class Sent:
    """One fax handed to the carrier (attempt 1), and a way to post signed webhooks about it."""

    def __init__(self, http: httpx.AsyncClient, database: Any, job: dict[str, Any]) -> None:
        self.http, self.database, self.job = http, database, job
        self.fax_id, self.carrier_id = job["_id"], job["carrier_ids"]["1"]

    async def post(
        self, event_type: str, reference: str | None = None, event_id: Any = None, **payload: Any
    ) -> httpx.Response:
        state = base64.b64encode((reference or f"{self.fax_id}:1").encode()).decode()
        body = {
            "data": {
                "event_type": event_type,
                "id": event_id or str(uuid.uuid4()),
                "occurred_at": payload.pop("occurred_at", format_instant(now())),
                "record_type": "event",
                "payload": {"fax_id": self.carrier_id, "client_state": state, **payload},
            }
        }
        raw = json.dumps(body).encode()
        stamp = str(int(time.time()))
        signature = base64.b64encode(KEY.sign(stamp.encode() + b"|" + raw)).decode()
        headers = {"content-type": "application/json", "telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp}
        return await self.http.post("/fax/webhooks/telnyx", content=raw, headers=headers)

    async def current(self) -> dict[str, Any]:
        return await self.database.fax_jobs.find_one({"_id": self.fax_id})

    async def communication(self) -> dict[str, Any]:
        return (await self.http.get(f"/fhir/Communication/{self.job['communication_id']}")).json()


@pytest.fixture
async def sent(fax_settings: Settings, database: Any) -> AsyncIterator[Sent]:
    settings = fax_settings.model_copy(
        update={"telnyx_public_key": PUBLIC, "worker_enabled": False, "simulator_speed": 1000.0}
    )
    async with serving_fax(settings, database) as http:
        body = {"media": MEDIA, "quality": "standard", "recipientNumber": "+16175550143", "sender": SEED_SENDER}
        communication_id = (await http.post("/fax/v1/send", json=body)).json()["communicationResource"]["id"]
        assert await create_worker(settings, database).step() is True  # attempt 1 handed to the carrier
        job = await database.fax_jobs.find_one({"communication_id": communication_id})
        assert job["state"] == "submitted"
        yield Sent(http, database, job)


async def assert_nothing_applied(sent: Sent, before: dict[str, Any]) -> None:
    job = await sent.current()
    assert (job["attempt"], job["status"], job["state"]) == (before["attempt"], before["status"], before["state"])
    assert (await sent.communication())["meta"]["versionId"] == "2", "still the PROCESSING version"
    assert await sent.database.webhook_receipts.count_documents({}) == 0


async def test_an_event_for_an_attempt_never_made_is_refused(sent: Sent, caplog: pytest.LogCaptureFixture) -> None:
    before = await sent.current()
    with caplog.at_level(logging.WARNING, logger="fhir_fax"):
        response = await sent.post("fax.delivered", reference=f"{sent.fax_id}:2", page_count=3)
    assert response.status_code == 409
    assert response.json() == {
        "message": f"The event is about attempt 2 of fax {sent.fax_id}, which was never handed to Telnyx (or its "
        "hand-over is not recorded yet); nothing was applied.",
        "code": 409,
    }
    await assert_nothing_applied(sent, before)
    assert any("attempt 2" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


async def test_an_event_from_another_carrier_fax_is_refused(sent: Sent) -> None:
    before = await sent.current()
    sent.carrier_id = "4a5b6c7d-someone-elses-fax"
    response = await sent.post("fax.delivered", page_count=3)
    assert response.status_code == 409
    assert response.json()["message"] == (
        f"The event is about Telnyx fax 4a5b6c7d-someone-elses-fax, but attempt 1 of fax {sent.fax_id} is "
        f"Telnyx fax {before['carrier_ids']['1']}; nothing was applied."
    )
    await assert_nothing_applied(sent, before)


async def test_an_event_for_a_fax_never_sent_is_refused(sent: Sent) -> None:
    before = await sent.current()
    response = await sent.post("fax.delivered", reference="no-such-fax:1", page_count=3)
    assert response.status_code == 409
    assert response.json()["message"] == (
        "The event is about fax no-such-fax, which this server never sent; nothing was applied."
    )
    await assert_nothing_applied(sent, before)


@pytest.mark.parametrize("carrier_id", [None, 7, "", "x" * 200])
async def test_an_event_without_a_usable_carrier_fax_id_is_refused(sent: Sent, carrier_id: Any) -> None:
    before = await sent.current()
    sent.carrier_id = carrier_id
    response = await sent.post("fax.delivered", page_count=3)
    assert response.status_code == 400
    assert response.json()["message"] == "The webhook's payload.fax_id is not a Telnyx fax id; nothing was applied."
    await assert_nothing_applied(sent, before)


@pytest.mark.parametrize("state", ["{fax}:²", "{fax}:0", "{fax}:1\n", "{fax}", "a b:1"])
async def test_a_client_state_that_is_not_one_of_our_references_is_ignored(sent: Sent, state: str) -> None:
    before = await sent.current()
    response = await sent.post("fax.delivered", reference=state.format(fax=sent.fax_id), page_count=3)
    assert (response.status_code, response.json()) == (200, {"status": "ignored"})
    job = await sent.current()
    assert (job["attempt"], job["status"]) == (before["attempt"], before["status"])


@pytest.mark.parametrize("pages", ["three", "3", True, -1, 0, 2.5, 10**9, [3], None])
async def test_a_delivery_with_a_bad_page_count_is_applied_without_it(
    sent: Sent, pages: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fhir_fax"):
        response = await sent.post("fax.delivered", page_count=pages)
    assert (response.status_code, response.json()) == (200, {"status": "applied"})
    job = await sent.current()
    assert (job["status"], job["synced"], job.get("pages")) == ("DELIVERED", True, None)
    communication = await sent.communication()
    assert communication["status"] == "completed"
    assert PAGES_EXTENSION not in [e["url"] for e in communication["extension"]]
    if pages is not None:
        assert any("page_count" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)


async def test_a_good_page_count_and_time_are_kept(sent: Sent) -> None:
    occurred = format_instant(now())
    response = await sent.post("fax.delivered", page_count=3, occurred_at=occurred)
    assert response.json() == {"status": "applied"}
    communication = await sent.communication()
    assert {"url": PAGES_EXTENSION, "valueInteger": 3} in communication["extension"]
    assert communication["received"] == occurred


@pytest.mark.parametrize(
    "occurred",
    [
        "yesterday",
        "2026-13-45T00:00:00Z",
        "2026-01-05T10:00:00",
        17,
        "٢٠٢٦-01-05",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59Z",
        "2000-01-01T00:00:00Z",
    ],
)
async def test_a_bad_event_time_is_replaced_by_the_time_of_receipt(sent: Sent, occurred: Any) -> None:
    response = await sent.post("fax.delivered", page_count=3, occurred_at=occurred)
    assert response.json() == {"status": "applied"}
    communication = await sent.communication()
    assert communication["status"] == "completed"
    assert communication["sent"] <= communication["received"] <= format_instant(now()), "the time of receipt"


@pytest.mark.parametrize(
    ("reason", "code", "message"),
    [
        ("user_busy", "BUSY", "The line was busy."),
        ("486", "486", "The call failed with SIP 486."),
        ("some_new_reason", "FAILED", "The fax could not be sent (some_new_reason)."),
        ("<script>alert(1)</script>", "UNKNOWN", "The carrier reported a failure without a reason."),
        ("٤٨٦", "UNKNOWN", "The carrier reported a failure without a reason."),
        ({"nested": "object"}, "UNKNOWN", "The carrier reported a failure without a reason."),
        ("x" * 500, "UNKNOWN", "The carrier reported a failure without a reason."),
    ],
)
async def test_failure_reasons_are_checked_before_they_reach_the_communication(
    sent: Sent, reason: Any, code: str, message: str
) -> None:
    response = await sent.post("fax.failed", failure_reason=reason, status="failed")
    assert response.json() == {"status": "applied"}
    failures = (await sent.current())["failures"]
    assert (failures[-1]["code"], failures[-1]["message"]) == (code, message)
    communication = await sent.communication()
    assert "<script>" not in json.dumps(communication)


async def test_a_deeply_nested_signed_body_is_refused(sent: Sent) -> None:
    before = await sent.current()
    raw = b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    stamp = str(int(time.time()))
    signature = base64.b64encode(KEY.sign(stamp.encode() + b"|" + raw)).decode()
    headers = {"content-type": "application/json", "telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp}
    response = await sent.http.post("/fax/webhooks/telnyx", content=raw, headers=headers)
    assert response.status_code == 400
    assert response.json()["message"] == "The webhook body is not a Telnyx event envelope."
    await assert_nothing_applied(sent, before)


@pytest.mark.parametrize("event_id", [{"$gt": ""}, 12, "x" * 200, "a b"])
async def test_an_event_id_that_is_not_one_is_refused(sent: Sent, event_id: Any) -> None:
    before = await sent.current()
    response = await sent.post("fax.delivered", event_id=event_id, page_count=3)
    assert response.status_code == 400
    assert response.json()["message"] == "The webhook's data.id is not a Telnyx event id; nothing was applied."
    await assert_nothing_applied(sent, before)
