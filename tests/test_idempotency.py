"""Nothing twice, nothing lost: idempotency keys, concurrent retries, and a write that fails half-way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from fhir_fax.auth.clients import Clients

from helpers import FHIR_JSON, MEDIA, as_parameters, login, seed_request, stored_counts


@pytest.fixture
def fail_point(mongo_uri: str) -> Iterator[Any]:
    """Arms MongoDB's ``failCommand`` fail point on the real server; always disarmed afterwards."""
    client: MongoClient = MongoClient(mongo_uri)

    def arm(mode: Any, commands: list[str], code: int = 8) -> None:
        client.admin.command(
            "configureFailPoint", "failCommand", mode=mode, data={"failCommands": commands, "errorCode": code}
        )

    try:
        yield arm
    finally:
        with contextlib.suppress(Exception):
            client.admin.command("configureFailPoint", "failCommand", mode="off")
        client.close()


@pytest.mark.parametrize("header", ["Idempotency-Key", "x-oystehr-request-id"])
async def test_a_repeated_request_returns_the_first_response_and_queues_one_fax(
    fax_api: httpx.AsyncClient, database: Any, header: str
) -> None:
    first = await fax_api.post("/fax/v1/send", json=seed_request(), headers={header: "key-1"})
    again = await fax_api.post("/fax/v1/send", json=seed_request(), headers={header: "key-1"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert await stored_counts(database) == {"Communication": 1, "fax_jobs": 1, "fax_idempotency": 1}


async def test_the_same_request_through_the_fhir_door_replays_too(fax_api: httpx.AsyncClient, database: Any) -> None:
    sdk = await fax_api.post("/fax/v1/send", json=seed_request(), headers={"Idempotency-Key": "k"})
    fhir = await fax_api.post(
        "/fhir/Communication/$send-fax",
        json=as_parameters(seed_request()),
        headers={**FHIR_JSON, "Idempotency-Key": "k"},
    )
    assert fhir.json()["id"] == sdk.json()["communicationResource"]["id"]
    assert (await stored_counts(database))["fax_jobs"] == 1


async def test_the_same_key_with_a_different_request_is_422(fax_api: httpx.AsyncClient, database: Any) -> None:
    await fax_api.post("/fax/v1/send", json=seed_request(), headers={"Idempotency-Key": "k"})
    other = await fax_api.post("/fax/v1/send", json=seed_request(quality="fine"), headers={"Idempotency-Key": "k"})
    assert other.status_code == 422
    assert "was already used for a different fax request" in other.json()["message"]
    assert await stored_counts(database) == {"Communication": 1, "fax_jobs": 1, "fax_idempotency": 1}


async def test_concurrent_retries_with_one_key_make_one_fax(fax_api: httpx.AsyncClient, database: Any) -> None:
    responses = await asyncio.gather(
        *(fax_api.post("/fax/v1/send", json=seed_request(), headers={"Idempotency-Key": "burst"}) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["communicationResource"]["id"] for r in responses}) == 1
    assert await stored_counts(database) == {"Communication": 1, "fax_jobs": 1, "fax_idempotency": 1}


async def test_without_a_key_each_request_is_a_new_fax(fax_api: httpx.AsyncClient, database: Any) -> None:
    for _ in range(2):
        assert (await fax_api.post("/fax/v1/send", json=seed_request())).status_code == 200
    assert await stored_counts(database) == {"Communication": 2, "fax_jobs": 2, "fax_idempotency": 0}


@pytest.mark.parametrize("key", ["", "x" * 300, "tab\there"])
async def test_unusable_keys_are_refused(fax_api: httpx.AsyncClient, database: Any, key: str) -> None:
    response = await fax_api.post("/fax/v1/send", json=seed_request(), headers={"Idempotency-Key": key})
    assert response.status_code == 400
    assert "idempotency key must be 1-255 printable characters" in response.json()["message"]
    assert (await stored_counts(database))["Communication"] == 0


async def test_a_failed_second_write_stores_nothing_and_the_retry_sends_once(
    fax_api: httpx.AsyncClient, database: Any, fail_point: Any
) -> None:
    """The Communication insert succeeds, the job insert fails: neither may remain."""
    fail_point({"skip": 1}, ["insert"])
    try:
        failed = await fax_api.post(
            "/fax/v1/send", json=seed_request(media=MEDIA), headers={"Idempotency-Key": "crash"}
        )
    finally:
        fail_point("off", ["insert"])
    assert failed.status_code == 503
    assert "nothing was stored or sent" in failed.json()["message"]
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}
    retried = await fax_api.post("/fax/v1/send", json=seed_request(media=MEDIA), headers={"Idempotency-Key": "crash"})
    assert retried.status_code == 200
    communication = retried.json()["communicationResource"]
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    assert job is not None and job["state"] != "failed"  # queued, or already taken by the worker the send woke
    assert await stored_counts(database) == {"Communication": 1, "fax_jobs": 1, "fax_idempotency": 1}


async def test_a_failed_idempotency_write_rolls_back_the_fax(
    fax_api: httpx.AsyncClient, database: Any, fail_point: Any
) -> None:
    """The third write of the transaction fails: the Communication and the job go with it."""
    fail_point({"skip": 2}, ["insert"])
    try:
        failed = await fax_api.post("/fax/v1/send", json=seed_request(media=MEDIA), headers={"Idempotency-Key": "late"})
    finally:
        fail_point("off", ["insert"])
    assert failed.status_code == 503
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}


async def test_keys_belong_to_the_client_that_used_them(fax_api: httpx.AsyncClient, database: Any) -> None:
    first = await fax_api.post("/fax/v1/send", json=seed_request(), headers={"Idempotency-Key": "shared"})
    allow_all = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}
    other, secret = await Clients(database).create("other clinic", allow_all)
    await login(fax_api, other["clientId"], secret)
    second = await fax_api.post("/fax/v1/send", json=seed_request(), headers={"Idempotency-Key": "shared"})
    assert second.status_code == 200 and "idempotent-replayed" not in second.headers
    assert second.json()["communicationResource"]["id"] != first.json()["communicationResource"]["id"]
    assert (await stored_counts(database))["Communication"] == 2
