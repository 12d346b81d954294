"""$send-fax happy paths: the seed's request through both doors, compared with the seed element by element."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fhir_fax.fhir.models import model_class
from fhir_fax.settings import Settings

from helpers import (
    FHIR_JSON,
    MEDIA,
    SEED_RECIPIENT,
    SEED_SENDER,
    SENDER_NUMBER,
    as_parameters,
    assert_matches_seed,
    seed_request,
    serving_fax,
    stored_counts,
)


@pytest.fixture
async def queued_api(fax_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app without its worker: a send wakes the worker of its process at once, which would claim the job
    before the test reads what the send itself recorded."""
    async with serving_fax(fax_settings.model_copy(update={"worker_enabled": False}), database) as http:
        yield http


async def send_sdk(api: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await api.post("/fax/v1/send", json=body, headers=headers)


async def send_fhir(api: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await api.post("/fhir/Communication/$send-fax", json=as_parameters(body), headers={**FHIR_JSON, **headers})


def communication_of(response: httpx.Response, door: str) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    return body["communicationResource"] if door == "sdk" else body


@pytest.mark.parametrize("door", ["sdk", "fhir"])
async def test_the_seed_request_returns_the_seed_communication(
    queued_api: httpx.AsyncClient, database: Any, door: str
) -> None:
    fax_api = queued_api
    send = send_sdk if door == "sdk" else send_fhir
    communication = communication_of(await send(fax_api, seed_request()), door)
    assert_matches_seed(communication)
    assert communication["recipient"] == [{"reference": SEED_RECIPIENT}]
    assert "contained" not in communication and "subject" not in communication
    stored = await fax_api.get(f"/fhir/Communication/{communication['id']}")
    assert stored.json() == communication, "reads back identically"
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    assert job["_id"] == communication["identifier"][0]["value"]
    assert (job["state"], job["quality"], job["from_number"], job["to_number"]) == (
        "queued",
        "standard",
        SENDER_NUMBER,
        "+16175550143",
    )
    assert job["media"] == "z3://my-bucket/path/to/document.pdf"


@pytest.mark.parametrize("door", ["sdk", "fhir"])
async def test_recipient_number_becomes_a_contained_practitioner_with_a_valid_id(
    fax_api: httpx.AsyncClient, database: Any, door: str
) -> None:
    send = send_sdk if door == "sdk" else send_fhir
    body = seed_request(recipient=None, recipientNumber="+12223334444", media=MEDIA)
    communication = communication_of(await send(fax_api, body), door)
    assert_matches_seed(communication, media=MEDIA)
    # The seed uses "+12223334444" as the id, which is not a valid FHIR id; the digits are.
    assert communication["contained"] == [
        {"resourceType": "Practitioner", "id": "12223334444", "telecom": [{"system": "fax", "value": "+12223334444"}]}
    ]
    assert communication["recipient"] == [{"reference": "#12223334444"}]
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    assert job["to_number"] == "+12223334444"


async def test_patient_becomes_the_subject(fax_api: httpx.AsyncClient) -> None:
    response = await send_sdk(fax_api, seed_request(patient="Patient/maria-lopez"))
    assert communication_of(response, "sdk")["subject"] == {"reference": "Patient/maria-lopez"}


@pytest.mark.parametrize("quality", ["standard", "fine", "superfine"])
async def test_each_quality_is_queued_as_asked(fax_api: httpx.AsyncClient, database: Any, quality: str) -> None:
    communication = communication_of(await send_sdk(fax_api, seed_request(quality=quality)), "sdk")
    assert (await database.fax_jobs.find_one({"communication_id": communication["id"]}))["quality"] == quality


@pytest.mark.parametrize(
    ("sender", "recipient", "to_number"),
    [
        ("Organization/riverside-family-medicine", "Organization/harbor-cardiology", "+16175550141"),
        (SEED_SENDER, "PractitionerRole/chen-harbor-cardiology", "+16175550144"),
    ],
)
async def test_other_sender_and_recipient_types(
    fax_api: httpx.AsyncClient, database: Any, sender: str, recipient: str, to_number: str
) -> None:
    communication = communication_of(
        await send_sdk(fax_api, seed_request(sender=sender, recipient=recipient, media=MEDIA)), "sdk"
    )
    assert communication["sender"] == {"reference": sender}
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    assert job["to_number"] == to_number


async def test_absolute_references_to_this_server_are_accepted_and_stored_relative(fax_api: httpx.AsyncClient) -> None:
    body = seed_request(
        sender=f"http://fhir.test/fhir/{SEED_SENDER}", recipient=f"http://fhir.test/fhir/{SEED_RECIPIENT}"
    )
    communication = communication_of(await send_sdk(fax_api, body), "sdk")
    assert communication["sender"] == {"reference": SEED_SENDER}
    assert communication["recipient"] == [{"reference": SEED_RECIPIENT}]


async def test_fax_number_choice_prefers_rank_and_skips_ended_periods(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    recipient = {
        "resourceType": "Practitioner",
        "telecom": [
            {"system": "fax", "value": "+16175550150"},
            {"system": "fax", "value": "+16175550151", "rank": 2},
            {"system": "fax", "value": "+16175550152", "rank": 1, "period": {"end": "2020-01-01"}},
            {"system": "phone", "value": "+16175550153", "rank": 1},
        ],
    }
    created = (await fax_api.post("/fhir/Practitioner", json=recipient, headers=FHIR_JSON)).json()
    body = seed_request(recipient=f"Practitioner/{created['id']}")
    communication = communication_of(await send_sdk(fax_api, body), "sdk")
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    assert job["to_number"] == "+16175550151"  # ranked beats unranked; the ended rank 1 is skipped


async def test_the_sender_uses_its_onboarded_number_when_it_has_several(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    sender = {
        "resourceType": "Organization",
        "name": "Two lines",
        "telecom": [{"system": "fax", "value": "+16175550160", "rank": 1}, {"system": "fax", "value": SENDER_NUMBER}],
    }
    created = (await fax_api.post("/fhir/Organization", json=sender, headers=FHIR_JSON)).json()
    communication = communication_of(
        await send_sdk(fax_api, seed_request(sender=f"Organization/{created['id']}")), "sdk"
    )
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    assert job["from_number"] == SENDER_NUMBER


async def test_the_operation_is_defined_and_advertised(fax_api: httpx.AsyncClient) -> None:
    definition = (await fax_api.get("/fhir/OperationDefinition/send-fax")).json()
    model_class("OperationDefinition").model_validate(definition)
    assert (definition["code"], definition["type"], definition["instance"], definition["system"]) == (
        "send-fax",
        True,
        False,
        False,
    )
    assert definition["resource"] == ["Communication"] and definition["affectsState"] is True
    names = {(p["name"], p["use"]) for p in definition["parameter"]}
    assert names == {
        ("media", "in"),
        ("quality", "in"),
        ("sender", "in"),
        ("recipient", "in"),
        ("recipientNumber", "in"),
        ("patient", "in"),
        ("coverPage", "in"),
        ("coverNote", "in"),
        ("return", "out"),
    }
    assert next(p for p in definition["parameter"] if p["name"] == "media")["max"] == "20"
    statement = (await fax_api.get("/fhir/metadata")).json()
    communication = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Communication")
    advertised = communication["operation"]
    assert {"name": "send-fax", "definition": definition["url"]} in advertised
    assert {"name": "preview-fax", "definition": "urn:fhir-fax:OperationDefinition:preview-fax"} in advertised
    assert {"name": "resend", "definition": "urn:fhir-fax:OperationDefinition:resend"} in advertised


async def test_the_definition_drives_what_is_accepted(fax_api: httpx.AsyncClient, database: Any) -> None:
    """A reference type the served definition does not list is refused with the definition's list."""
    definition = (await fax_api.get("/fhir/OperationDefinition/send-fax")).json()
    sender_types = [
        t.rsplit("/", 1)[1] for p in definition["parameter"] if p["name"] == "sender" for t in p["targetProfile"]
    ]
    assert "CareTeam" not in sender_types
    response = await send_sdk(fax_api, seed_request(sender="CareTeam/team-1"))
    assert response.status_code == 400
    assert ", ".join(sender_types) in response.json()["message"]
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}
