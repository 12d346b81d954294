"""One runtime for every entry point: a fax sent from the command line leaves the trail one sent over HTTP leaves."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_fax import cli
from fhir_fax.fax.terminology import OUTBOUND_STATUS_EXTENSION
from fhir_fax.fax.worker import create_worker
from fhir_fax.settings import Settings

from helpers import FIXTURES, SEED_SENDER, serving

LINE_THAT_ANSWERS = "+16175550143"


def status_of(communication: dict[str, Any]) -> str:
    extension = next(e for e in communication["extension"] if e["url"] == OUTBOUND_STATUS_EXTENSION)
    return str(extension["valueCodeableConcept"]["coding"][0]["code"])


async def trail(database: Any, communication_id: str) -> list[dict[str, Any]]:
    """The AuditEvents about one fax, oldest first."""
    found = database["AuditEvent"].find({"entity.what.reference": f"Communication/{communication_id}"})
    return sorted([event async for event in found], key=lambda e: e["recorded"])


def distinct(shapes: list[tuple[str, str, str, list[str]]]) -> list[tuple[str, str, str, list[str]]]:
    """The shapes in order, each once."""
    return [s for index, s in enumerate(shapes) if s not in shapes[:index]]


def shape(events: list[dict[str, Any]]) -> list[tuple[str, str, str, list[str]]]:
    """What an event says, without who, when and which fax: subtype, action, outcome and the other entities."""
    return [
        (
            e["subtype"][0]["code"],
            e["action"],
            e["outcome"],
            sorted(x["what"]["reference"] for x in e["entity"] if not x["what"]["reference"].startswith("Comm")),
        )
        for e in events
    ]


async def delivered_over_http(api: httpx.AsyncClient, settings: Settings, database: Any) -> str:
    body = {
        "media": "z3://fixtures/referral-letter.pdf", "quality": "fine", "sender": SEED_SENDER,
        "recipientNumber": LINE_THAT_ANSWERS, "patient": "Patient/maria-lopez",
    }  # fmt: skip
    response = await api.post("/fax/v1/send", json=body)
    assert response.status_code == 200, response.text
    communication_id = str(response.json()["communicationResource"]["id"])
    worker = asyncio.create_task(create_worker(settings, database).run())  # read the store directly: not audited
    try:
        async with asyncio.timeout(120):
            while True:
                if status_of(await database["Communication"].find_one({"_id": communication_id})) == "DELIVERED":
                    break
                await asyncio.sleep(0.05)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    return communication_id


async def test_a_fax_sent_from_the_command_line_is_audited_as_one_sent_over_http(
    fax_settings: Settings, database: Any, mongo_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = fax_settings.model_copy(update={"worker_enabled": False, "simulator_speed": 10.0})  # no step superseded
    async with serving(settings, database) as api:
        assert (await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})).status_code == 200
        over_http = await delivered_over_http(api, settings, database)

        for name, value in {
            "MONGODB_URI": mongo_uri, "DATABASE_NAME": database.name, "DATA_DIR": str(tmp_path / "cli"),
            "SIMULATOR_SPEED": "10", "RETRY_DELAY_SECONDS": "0.05",
        }.items():  # fmt: skip
            monkeypatch.setenv(f"FHIR_FAX_{name}", value)
        before = set(await database["Communication"].distinct("_id"))
        letter = str(FIXTURES / "referral-letter.pdf")
        arguments = ["send", "--media", letter, "--to", LINE_THAT_ANSWERS, "--patient", "Patient/maria-lopez"]
        assert await asyncio.to_thread(cli.main, arguments) == 0  # the CLI's own event loop, in its own thread
        (from_cli,) = set(await database["Communication"].distinct("_id")) - before
        cli_trail = await trail(database, from_cli)
        http_trail = await trail(database, over_http)

    assert cli_trail[0]["subtype"][0]["code"] == "send-fax"
    # The same events, said the same way. How many status versions a fax gets depends on timing (a step that the
    # carrier's news already superseded is not written), so each trail is held to its own fax: the send, then one
    # status event per later version.
    assert distinct(shape(cli_trail)) == distinct(shape(http_trail))
    for events, communication_id in ((cli_trail, from_cli), (http_trail, over_http)):
        stored = await database["Communication"].find_one({"_id": communication_id})
        assert len(events) == stored["_fhirfax"]["version"], [e["subtype"][0]["code"] for e in events]
    sent_event = cli_trail[0]
    assert sent_event["agent"][0]["who"]["identifier"]["value"].startswith("local")
    assert {"what": {"reference": "Patient/maria-lopez"}} in sent_event["entity"]
