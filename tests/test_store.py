"""The versioned resource store, against a real server, through both PyMongo async and Motor."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fhir_fax.fhir.errors import InvalidRequest, PreconditionFailed, ResourceGone, ResourceNotFound
from fhir_fax.fhir.models import SUPPORTED_TYPES
from fhir_fax.fhir.store import RESERVED, ResourceStore, history_collection


def patient(family: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family}], **extra}


@pytest.fixture
async def store(any_database: Any) -> ResourceStore:
    store = ResourceStore(any_database)
    await store.ensure_indexes(SUPPORTED_TYPES)
    return store


async def test_create_assigns_id_and_meta_ignoring_the_clients(store: ResourceStore) -> None:
    stored = await store.create(patient("Lopez", id="client-id", meta={"versionId": "9", "source": "x"}))
    assert stored["id"] != "client-id"
    assert stored["meta"]["versionId"] == "1"
    assert stored["meta"]["lastUpdated"].endswith("Z")
    assert stored["meta"]["source"] == "x"  # other meta elements are the client's to keep
    assert "_id" not in stored and RESERVED not in stored
    assert await store.read("Patient", stored["id"]) == stored


async def test_invalid_resource_is_refused_and_nothing_is_stored(store: ResourceStore) -> None:
    with pytest.raises(InvalidRequest) as error:
        await store.create(patient("Lopez", gender=5))
    assert "Patient.gender" in error.value.diagnostics
    assert await store.collection("Patient").count_documents({}) == 0


async def test_update_makes_a_new_version_and_keeps_the_old(store: ResourceStore) -> None:
    first = await store.create(patient("Lopez"))
    second, created = await store.update("Patient", first["id"], {**first, "name": [{"family": "Lopes"}]})
    assert not created
    assert second["meta"]["versionId"] == "2"
    assert (await store.vread("Patient", first["id"], "1"))["name"] == [{"family": "Lopez"}]
    assert (await store.vread("Patient", first["id"], "2"))["name"] == [{"family": "Lopes"}]
    versions = await store.history("Patient", first["id"], limit=10)
    assert [(v.version, v.method) for v in versions] == [(2, "PUT"), (1, "POST")]


async def test_update_with_a_new_id_creates_it(store: ResourceStore) -> None:
    stored, created = await store.update("Patient", "p-1", patient("Lopez", id="p-1"))
    assert created and stored["id"] == "p-1" and stored["meta"]["versionId"] == "1"


async def test_update_refuses_an_id_that_differs_from_the_url(store: ResourceStore) -> None:
    with pytest.raises(InvalidRequest, match="does not match the id in the URL"):
        await store.update("Patient", "p-1", patient("Lopez", id="p-2"))
    assert await store.collection("Patient").count_documents({}) == 0


async def test_if_match_must_name_the_current_version(store: ResourceStore) -> None:
    first = await store.create(patient("Lopez"))
    with pytest.raises(PreconditionFailed, match="current version is 1"):
        await store.update("Patient", first["id"], first, if_match='W/"7"')
    updated, _ = await store.update("Patient", first["id"], first, if_match='W/"1"')
    assert updated["meta"]["versionId"] == "2"
    with pytest.raises(PreconditionFailed, match="does not exist"):
        await store.update("Patient", "nobody", patient("X", id="nobody"), if_match='W/"1"')
    with pytest.raises(InvalidRequest, match="If-Match"):
        await store.update("Patient", first["id"], first, if_match="yesterday")


async def test_delete_then_read_is_gone_and_history_shows_it(store: ResourceStore) -> None:
    first = await store.create(patient("Lopez"))
    assert await store.delete("Patient", first["id"]) == 2
    with pytest.raises(ResourceGone):
        await store.read("Patient", first["id"])
    with pytest.raises(ResourceGone):
        await store.vread("Patient", first["id"], "2")
    assert (await store.vread("Patient", first["id"], "1"))["name"] == [{"family": "Lopez"}]
    assert await store.delete("Patient", first["id"]) is None  # deleting again changes nothing
    versions = await store.history("Patient", first["id"], limit=10)
    assert [(v.version, v.method, v.deleted) for v in versions] == [(2, "DELETE", True), (1, "POST", False)]
    revived, created = await store.update("Patient", first["id"], {**first, "name": [{"family": "Back"}]})
    assert created and revived["meta"]["versionId"] == "3"


async def test_missing_resources_and_versions_are_not_found(store: ResourceStore) -> None:
    with pytest.raises(ResourceNotFound):
        await store.read("Patient", "nobody")
    with pytest.raises(ResourceNotFound):
        await store.delete("Patient", "nobody")
    with pytest.raises(ResourceNotFound):
        await store.history("Patient", "nobody", limit=10)
    first = await store.create(patient("Lopez"))
    for version in ("2", "0", "abc"):
        with pytest.raises(ResourceNotFound):
            await store.vread("Patient", first["id"], version)


async def test_concurrent_updates_never_lose_a_version(store: ResourceStore) -> None:
    first = await store.create(patient("Writer-0"))
    writers = 25

    async def write(n: int) -> None:
        await store.update("Patient", first["id"], {**first, "name": [{"family": f"Writer-{n + 1}"}]})

    await asyncio.gather(*(write(n) for n in range(writers)))
    versions = await store.history("Patient", first["id"], limit=100)
    assert [v.version for v in versions] == list(range(writers + 1, 0, -1))
    families = sorted(v.resource["name"][0]["family"] for v in versions if v.resource)
    assert families == sorted(f"Writer-{n}" for n in range(writers + 1))


async def test_concurrent_if_match_updates_let_exactly_one_win(store: ResourceStore) -> None:
    first = await store.create(patient("Lopez"))
    results = await asyncio.gather(
        *(store.update("Patient", first["id"], first, if_match='W/"1"') for _ in range(10)),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, Exception)]
    assert len(wins) == 1
    assert all(isinstance(r, PreconditionFailed) for r in results if isinstance(r, Exception))


async def test_a_crash_between_history_copy_and_replace_leaves_history_correct(store: ResourceStore) -> None:
    first = await store.create(patient("Lopez"))
    current = await store.collection("Patient").find_one({"_id": first["id"]})
    # The first step of an update that then crashed: version 1 copied to history, not replaced.
    await store.database[history_collection("Patient")].insert_one(
        {**current, "_id": f"{first['id']}/1", RESERVED: {**current[RESERVED], "id": first["id"]}}
    )
    assert [v.version for v in await store.history("Patient", first["id"], limit=10)] == [1]
    await store.update("Patient", first["id"], {**first, "active": True})
    assert [v.version for v in await store.history("Patient", first["id"], limit=10)] == [2, 1]


async def test_modify_applies_a_change_function_atomically(store: ResourceStore) -> None:
    first = await store.create(patient("Lopez", active=False))

    async def toggle() -> None:
        await store.modify("Patient", first["id"], lambda r: {**r, "active": not r["active"]})

    await asyncio.gather(*(toggle() for _ in range(10)))
    current = await store.read("Patient", first["id"])
    assert current["meta"]["versionId"] == "11"
    assert current["active"] is False  # ten toggles, none lost
    assert await store.modify("Patient", first["id"], lambda r: None) is None
    assert (await store.read("Patient", first["id"]))["meta"]["versionId"] == "11"
