"""A carrier is one package and one registration: a tiny carrier defined here delivers a fax end to end.

It declares its capabilities (no TIFF: it gets the sender's PDF), takes the attempt, and reports through the
generic webhook route (``/fax/webhooks/pigeon``), verified by its own reader. Nothing in ``fhir_fax`` names it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime
from typing import Any

import httpx
import pytest

from fhir_fax.fax.jobs import Job, JobState, OutboundStatus
from fhir_fax.fax.retry import RetryPolicy
from fhir_fax.fax.status import Failure, StatusEvent
from fhir_fax.fax.transports import CARRIERS, make_transport, register
from fhir_fax.fax.transports.base import (
    Capabilities,
    Carrier,
    EventSink,
    Submission,
    VerifiedWebhook,
    WebhookRefused,
    WebhookUnreadable,
    webhook_path,
)
from fhir_fax.fax.transports.telnyx import Telnyx
from fhir_fax.fax.worker import create_worker
from fhir_fax.settings import Settings

from helpers import MEDIA, SEED_SENDER, serving_fax

SECRET = "pigeon-secret"


class Pigeon:
    """A carrier that keeps what it is handed and reports by webhook."""

    name = "pigeon"
    capabilities = Capabilities(takes_tiff=False, inbound=False, max_concurrency=1)

    def __init__(self) -> None:
        self.submissions: list[Submission] = []

    async def start(self, sink: EventSink) -> None:
        """News comes by webhook."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def submit(self, submission: Submission) -> str:
        self.submissions.append(submission)
        return f"pigeon-{len(self.submissions)}"

    async def find(self, reference: str, to_number: str, since: datetime) -> str | None:
        return next((f"pigeon-{n}" for n, s in enumerate(self.submissions, 1) if s.reference == reference), None)

    async def poll(self, carrier_id: str) -> list[StatusEvent]:
        return []


class PigeonWebhooks:
    """Signed with a shared secret in a header; the body names the attempt, the status and the carrier's fax."""

    def __init__(self, settings: Settings) -> None:
        self.secret = SECRET

    def verify(self, raw: bytes, headers: Mapping[str, str]) -> VerifiedWebhook:
        if headers.get("x-pigeon-secret") != self.secret:
            raise WebhookRefused("The pigeon's webhook is not signed with its secret.")
        try:
            body = json.loads(raw)
            return VerifiedWebhook(str(body["id"]), body)
        except (ValueError, KeyError, TypeError):
            raise WebhookUnreadable("The body is not a pigeon event.") from None

    def event(self, webhook: VerifiedWebhook) -> StatusEvent | None:
        body = webhook.body
        return StatusEvent(body["reference"], body["status"], datetime.now().astimezone(), carrier_id=body["fax"])


PIGEON = Carrier(name="pigeon", title="Pigeon", transport=lambda settings, database: Pigeon(), webhooks=PigeonWebhooks)


@pytest.fixture
def pigeon_registered() -> Iterator[None]:
    register(PIGEON)  # the one line a new carrier adds to fax/transports/__init__.py
    try:
        yield
    finally:
        CARRIERS.pop(PIGEON.name, None)


@pytest.fixture
async def pigeon_app(
    pigeon_registered: None, fax_settings: Settings, database: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    settings = fax_settings.model_copy(update={"carrier": "pigeon", "worker_enabled": False})
    async with serving_fax(settings, database) as http:
        yield http, settings


async def post_news(http: httpx.AsyncClient, event_id: str, reference: str, status: str, fax: str) -> httpx.Response:
    body = json.dumps({"id": event_id, "reference": reference, "status": status, "fax": fax})
    return await http.post(webhook_path("pigeon"), content=body, headers={"x-pigeon-secret": SECRET})


async def test_a_carrier_registered_from_outside_delivers_a_fax(
    pigeon_app: tuple[httpx.AsyncClient, Settings], database: Any
) -> None:
    http, settings = pigeon_app
    body = {"media": MEDIA, "quality": "fine", "recipientNumber": "+15550001111", "sender": SEED_SENDER}
    sent = await http.post("/fax/v1/send", json=body)
    assert sent.status_code == 200, sent.text
    communication_id = sent.json()["communicationResource"]["id"]

    worker = create_worker(settings, database)
    assert isinstance(worker.transport, Pigeon)
    assert await worker.step() is True
    [submission] = worker.transport.submissions
    assert submission.content_type == "application/pdf", "it declared no TIFF, so it gets the sender's document"
    assert submission.document.startswith(b"%PDF")
    stored = await database.fax_jobs.find_one({"communication_id": communication_id})
    assert (stored["state"], stored["carrier"], stored["carrier_ids"]) == ("submitted", "pigeon", {"1": "pigeon-1"})
    assert "rendered" not in stored, "no rendering was made for a carrier that does not take TIFF"

    reference = submission.reference
    news = [("PROCESSING", "ignored"), ("SENDING", "applied"), ("DELIVERED", "applied")]  # PROCESSING: since claimed
    for n, (status, outcome) in enumerate(news):
        answer = await post_news(http, f"e{n}", reference, status, "pigeon-1")
        assert (answer.status_code, answer.json()) == (200, {"status": outcome})
    again = await post_news(http, "e2", reference, "DELIVERED", "pigeon-1")
    assert again.json() == {"status": "duplicate"}, "receipts are kept per carrier and event id"

    communication = (await http.get(f"/fhir/Communication/{communication_id}")).json()
    assert communication["status"] == "completed"
    job = Job.of(await database.fax_jobs.find_one({"communication_id": communication_id}))
    assert (job.state, job.status, job.attempt) == (JobState.DONE, OutboundStatus.DELIVERED, 1)


async def test_the_generic_route_refuses_what_the_carrier_does_not_verify(
    pigeon_app: tuple[httpx.AsyncClient, Settings], database: Any
) -> None:
    http, settings = pigeon_app
    body = {"media": MEDIA, "quality": "standard", "recipientNumber": "+15550001111", "sender": SEED_SENDER}
    assert (await http.post("/fax/v1/send", json=body)).status_code == 200
    assert await create_worker(settings, database).step() is True
    job = Job.of(await database.fax_jobs.find_one({}))

    forged = await http.post(
        webhook_path("pigeon"), content=b'{"id": "x"}', headers={"x-pigeon-secret": "guess"}
    )  # fmt: skip
    assert forged.status_code == 401
    assert forged.json()["message"] == "The pigeon's webhook is not signed with its secret."
    garbled = await http.post(webhook_path("pigeon"), content=b"[", headers={"x-pigeon-secret": SECRET})
    assert (garbled.status_code, garbled.json()["message"]) == (400, "The body is not a pigeon event.")
    elsewhere = await post_news(http, "e1", job.reference, "DELIVERED", "pigeon-99")
    assert elsewhere.status_code == 409
    assert elsewhere.json()["message"] == (
        f"The event is about Pigeon fax pigeon-99, but attempt 1 of fax {job.id} is Pigeon fax pigeon-1; "
        "nothing was applied."
    )
    unknown = await http.post(webhook_path("owl"), content=b"{}")
    assert unknown.status_code == 404 and "owl" in unknown.json()["message"]
    assert (await database.fax_jobs.find_one({}))["status"] == "PROCESSING", "nothing was applied"
    assert await database.webhook_receipts.count_documents({}) == 0, "nothing was recorded"


def test_an_unknown_carrier_is_named_with_the_known_ones(settings: Settings, pigeon_registered: None) -> None:
    with pytest.raises(ValueError, match="FHIR_FAX_CARRIER may be: pigeon, simulator, telnyx"):
        make_transport(settings.model_copy(update={"carrier": "owl"}), None)


def test_the_built_in_carriers_declare_their_capabilities(settings: Settings) -> None:
    simulator = make_transport(settings, database=_NoDatabase())
    assert simulator.capabilities == Capabilities(takes_tiff=True, inbound=True), "a fax modem gets the rendering"
    assert Telnyx.capabilities == Capabilities(fetches_by_url=True, inbound=True), "Telnyx fetches the pinned version"
    assert CARRIERS["simulator"].webhooks is None and CARRIERS["telnyx"].webhooks is not None


class _NoDatabase(dict[str, Any]):
    """Collections on demand; the simulator only keeps a handle until it starts."""

    def __missing__(self, name: str) -> None:
        return None


def test_one_retry_policy_from_the_settings(settings: Settings) -> None:
    policy = RetryPolicy.of(settings.model_copy(update={"retry_max_attempts": 3, "retry_delay_seconds": 10.0}))
    moment = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    kill_at = datetime.fromisoformat("2026-01-01T01:00:00+00:00")
    assert policy.retry_at(1, Failure("BUSY", "busy"), moment, kill_at) == datetime.fromisoformat(
        "2026-01-01T00:00:10+00:00"
    )
    assert policy.retry_at(2, Failure("486", "busy here"), moment, kill_at) == datetime.fromisoformat(
        "2026-01-01T00:00:20+00:00"
    )
    assert policy.retry_at(3, Failure("BUSY", "busy"), moment, kill_at) is None, "three attempts at most"
    assert policy.retry_at(1, Failure("FAILED", "refused"), moment, kill_at) is None, "not transient"
    assert policy.retry_at(1, Failure("FAILED", "dropped", retry=True), moment, kill_at) is not None, "carrier says"
    assert policy.retry_at(1, Failure("BUSY", "busy"), moment, moment) is None, "never past the kill time"
