"""Constants and small helpers shared by tests."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pymongo import monitoring

from fhir_fax.fax.terminology import OUTBOUND_STATUS_EXTENSION
from fhir_fax.fhir.models import model_class
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

T = TypeVar("T")

FIXTURES = Path(__file__).resolve().parent.parent / "fhir_fax" / "data" / "fixtures"
SEED_MEDIA = "https://project-api.zapehr.com/v1/z3/my-bucket/path/to/document.pdf"
SEED_SENDER = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"
SEED_RECIPIENT = "Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c"
SENDER_NUMBER = "+12223334444"
MEDIA = "z3://my-bucket/path/to/document.pdf"
FHIR_JSON = {"content-type": "application/fhir+json"}
ADMIN_ID, ADMIN_SECRET = "test-admin", "test-admin-secret"
BOOTSTRAP = {"bootstrap_client_id": ADMIN_ID, "bootstrap_client_secret": ADMIN_SECRET}


async def login(http: httpx.AsyncClient, client_id: str = ADMIN_ID, secret: str = ADMIN_SECRET) -> str:
    """Get a token with client credentials and send it on every later request of ``http``."""
    response = await http.post(
        "/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    http.headers["authorization"] = f"Bearer {token}"
    return token


@asynccontextmanager
async def serving(
    settings: Any, database: Any, *, authenticated: bool = True, peer: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[httpx.AsyncClient]:
    """The tests' one way to run the app in-process: started (lifespan) on ``database``, called over ASGI.

    The client is logged in as the bootstrap admin unless ``authenticated`` is False; ``peer`` is the address
    the app sees the calls come from.
    """
    from fhir_fax.app import create_app

    app = create_app(settings, database=database)
    transport = httpx.ASGITransport(app=app, client=peer)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://fhir.test") as http,
    ):
        if authenticated:
            await login(http)
        yield http


@asynccontextmanager
async def serving_fax(settings: Any, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``serving``, ready to send the seed's fax: its document in Z3 and the sender's number onboarded."""
    async with serving(settings, database) as http:
        pdf = (FIXTURES / "referral-letter.pdf").read_bytes()
        await Z3Store(database).put(Z3Location("my-bucket", "path/to/document.pdf"), pdf, "application/pdf")
        response = await http.post("/fax/v1/onboard", json={"faxNumber": SENDER_NUMBER})
        assert response.status_code == 200, response.text
        yield http


async def eventually(probe: Callable[[], Awaitable[T | None]], *, within: float, failure: Callable[[], str]) -> T:
    """The tests' one polling loop: call ``probe`` until it gives something other than None, and return that.

    ``within`` (seconds) only keeps a broken build from hanging; ``failure()`` then says what was seen last.
    No test asserts on how long anything took.
    """
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(failure())
        await asyncio.sleep(0.05)


FINAL_STATUSES = ("DELIVERED", "STOPPED")


def outbound_status(communication: dict[str, Any]) -> str:
    """The fax's own status (QUEUED ... DELIVERED/STOPPED), from its Communication's extension."""
    extension = next(e for e in communication["extension"] if e["url"] == OUTBOUND_STATUS_EXTENSION)
    code: str = extension["valueCodeableConcept"]["coding"][0]["code"]
    return code


async def wait_final(http: httpx.AsyncClient, communication_id: str, within: float = 30) -> dict[str, Any]:
    """The fax's Communication once it is DELIVERED or STOPPED: the one way tests wait for a fax to end.

    ``http`` is an in-process client (``serving``) or one on a server process's URL, with a token.
    """
    seen: list[str] = []

    async def probe() -> dict[str, Any] | None:
        communication: dict[str, Any] = (await http.get(f"/fhir/Communication/{communication_id}")).json()
        seen.append(outbound_status(communication))
        return communication if seen[-1] in FINAL_STATUSES else None

    return await eventually(probe, within=within, failure=lambda: f"fax {communication_id} is still {seen[-1]}")


def wait_final_at(url: str, headers: dict[str, str], communication_ids: list[str], within: float = 60) -> list[Any]:
    """``wait_final`` of each fax, for synchronous tests of a server process at ``url``."""

    async def every() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as http:
            return [await wait_final(http, communication_id, within) for communication_id in communication_ids]

    return asyncio.run(every())


def seed_request(**changes: Any) -> dict[str, Any]:
    """The seed's own ``fax.send`` parameters, with ``changes`` applied (None removes a key)."""
    body: dict[str, Any] = {
        "media": SEED_MEDIA,
        "quality": "standard",
        "recipient": SEED_RECIPIENT,
        "sender": SEED_SENDER,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def as_parameters(body: dict[str, Any]) -> dict[str, Any]:
    """The same request as a FHIR Parameters resource."""
    value_types = {
        "media": "valueUrl",
        "quality": "valueCode",
        "sender": "valueReference",
        "recipient": "valueReference",
        "patient": "valueReference",
        "recipientNumber": "valueString",
    }
    parameters = []
    for name, value in body.items():
        kind = value_types[name]
        parameters.append({"name": name, kind: {"reference": value} if kind == "valueReference" else value})
    return {"resourceType": "Parameters", "parameter": parameters}


async def stored_counts(database: Any) -> dict[str, int]:
    """How many Communications, jobs and idempotency records exist (to prove nothing was written)."""
    return {name: await database[name].count_documents({}) for name in ("Communication", "fax_jobs", "fax_idempotency")}


async def everything_stored(database: Any) -> dict[str, int]:
    """Documents per non-empty collection (resources, history, audit, outbox), to prove a refusal stored nothing.

    Empty collections are left out: a background task (the simulator creating its indexes) may create one
    at any moment without storing anything.
    """
    counts = {name: await database[name].count_documents({}) for name in await database.list_collection_names()}
    return {name: count for name, count in counts.items() if count}


INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SEED_MEDIUM_CODING = {
    "system": "https://terminology.hl7.org/6.0.2/ValueSet-v3-ParticipationMode.html",
    "code": "FAXWRIT",
    "display": "telefax",
}
SEED_IDENTIFIER_TYPE = {
    "coding": [
        {
            "system": "https://terminology.fhir.oystehr.com/CodeSystem/fax",
            "code": "FAX-ID",
            "display": "Fax ID",
            "version": "1.0.0",
        }
    ]
}
SEED_STATUS_EXTENSION = {
    "url": "https://extensions.fhir.oystehr.com/outbound-fax-status",
    "valueCodeableConcept": {
        "coding": [
            {
                "system": "https://terminology.fhir.oystehr.com/CodeSystem/outbound-fax-status",
                "code": "QUEUED",
                "display": "queued",
            }
        ],
        "text": "queued",
    },
}


def assert_matches_seed(communication: dict[str, Any], media: str = SEED_MEDIA) -> None:
    """Every element of the seed's example response, in turn."""
    assert communication["resourceType"] == "Communication"
    medium = communication["medium"]
    assert len(medium) == 1 and medium[0]["text"] == "telefax"
    assert medium[0]["coding"][0] == SEED_MEDIUM_CODING
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode",
        "code": "FAXWRIT",
        "display": "telefax",
    } in medium[0]["coding"]
    assert communication["payload"][0]["contentAttachment"]["url"] == media
    assert communication["payload"][0]["contentAttachment"]["contentType"] == "application/pdf"
    assert communication["sender"] == {"reference": SEED_SENDER}
    assert INSTANT.match(communication["sent"])
    sent = datetime.fromisoformat(communication["sent"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - sent) < timedelta(minutes=1)
    assert communication["status"] == "in-progress"
    uuid.UUID(communication["id"])
    assert communication["meta"]["versionId"] == "1"
    assert INSTANT.match(communication["meta"]["lastUpdated"])
    identifier = communication["identifier"]
    assert len(identifier) == 1
    assert identifier[0]["system"] == "https://identifiers.oystehr.com/fax"
    uuid.UUID(identifier[0]["value"])
    assert identifier[0]["type"] == SEED_IDENTIFIER_TYPE
    assert communication["extension"] == [SEED_STATUS_EXTENSION]
    model_class("Communication").model_validate(communication)


class Commands(monitoring.CommandListener):
    """The (command, collection) pairs a client sends to one database: what a path costs, in operations."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.seen: list[tuple[str, str]] = []
        self.sent: list[dict[str, Any]] = []  # the commands themselves, in the same order

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database:
            self.seen.append((event.command_name, str(event.command.get(event.command_name))))
            self.sent.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def on(self, collection: str) -> list[str]:
        """The commands sent to ``collection`` so far, in order."""
        return [command for command, target in self.seen if target == collection]

    def filters(self, command: str, collection: str) -> list[dict[str, Any]]:
        """The filters of the ``command`` (``find``) commands sent to ``collection`` so far."""
        return [dict(sent.get("filter") or {}) for sent in self.sent if sent.get(command) == collection]

    def clear(self) -> None:
        self.seen.clear()
        self.sent.clear()
