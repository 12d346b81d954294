"""A server-side change starts from this process's own last write instead of reading it (``fhir.recent``).

Each test checks what the saving must never cost: the version written is built on what is stored, history keeps
every version exactly as it was, a write another process made meanwhile is never lost, and a transaction that
rolled back leaves nothing to start from.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from fhir_fax.db import in_transaction
from fhir_fax.fhir.errors import ResourceNotFound
from fhir_fax.fhir.models import SUPPORTED_TYPES
from fhir_fax.fhir.store import RESERVED, ResourceStore, history_collection

from helpers import Commands


@pytest.fixture
async def recorded(mongo_uri: str) -> AsyncIterator[tuple[ResourceStore, ResourceStore, Commands]]:
    """Two stores on one database, as two server processes: the first's commands are recorded."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    commands = Commands(name)
    watched: Any = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[commands])
    other: Any = AsyncMongoClient(mongo_uri, tz_aware=True)
    store = ResourceStore(watched[name], watched=WATCHED)  # Communications carry Subscription marks, as served
    await store.ensure_indexes(SUPPORTED_TYPES)
    commands.clear()
    yield store, ResourceStore(other[name], watched=WATCHED), commands
    await other.drop_database(name)
    await watched.close()
    await other.close()


WATCHED = frozenset({"Communication"})


def communication(status: str = "in-progress") -> dict[str, Any]:
    return {"resourceType": "Communication", "status": status, "payload": [{"contentString": "letter"}]}


def to(status: str) -> Any:
    return lambda c: None if c["status"] == status else {**c, "status": status}


async def stored_versions(store: ResourceStore, resource_id: str) -> list[tuple[int, str]]:
    versions = await store.history("Communication", resource_id, limit=20)
    return sorted((v.version, (v.resource or {}).get("status", "")) for v in versions)


async def test_a_change_after_this_process_wrote_the_resource_reads_nothing(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    store, _, commands = recorded
    created = await store.create(communication())
    commands.seen.clear()
    changed = await store.modify("Communication", created["id"], to("completed"))
    assert changed is not None and changed["meta"]["versionId"] == "2"
    assert commands.seen == [("insert", "Communication_history"), ("update", "Communication")]
    commands.seen.clear()
    await store.modify("Communication", created["id"], to("stopped"))
    assert ("find", "Communication") not in commands.seen, "its own last write again"
    assert await stored_versions(store, created["id"]) == [(1, "in-progress"), (2, "completed"), (3, "stopped")]


async def test_a_version_another_process_wrote_meanwhile_is_built_on_not_lost(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    store, elsewhere, _ = recorded
    created = await store.create(communication())
    await elsewhere.modify("Communication", created["id"], lambda c: {**c, "note": [{"text": "from elsewhere"}]})
    changed = await store.modify("Communication", created["id"], to("completed"))
    assert changed is not None and changed["meta"]["versionId"] == "3"
    assert changed["note"] == [{"text": "from elsewhere"}], "the change was made on what is stored"
    assert await stored_versions(store, created["id"]) == [(1, "in-progress"), (2, "in-progress"), (3, "completed")]
    history = store.database[history_collection("Communication")]
    assert await history.count_documents({f"{RESERVED}.id": created["id"]}) == 2, "each earlier version once"


async def test_no_change_is_decided_on_what_is_stored_not_on_the_copy(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    """The copy already shows the change; what is stored no longer does: the change is made."""
    store, elsewhere, _ = recorded
    created = await store.create(communication("completed"))
    await elsewhere.modify("Communication", created["id"], to("in-progress"))
    changed = await store.modify("Communication", created["id"], to("completed"))
    assert changed is not None and changed["meta"]["versionId"] == "3"
    assert await stored_versions(store, created["id"]) == [(1, "completed"), (2, "in-progress"), (3, "completed")]


async def test_a_copy_that_says_gone_is_not_believed(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    """This process deleted it; another wrote it again since: the change is made on what is stored."""
    store, elsewhere, _ = recorded
    created = await store.create(communication())
    await store.delete("Communication", created["id"])
    await elsewhere.update("Communication", created["id"], {**communication(), "id": created["id"]})
    changed = await store.modify("Communication", created["id"], to("completed"))
    assert changed is not None and changed["meta"]["versionId"] == "4" and changed["status"] == "completed"


async def test_a_resource_deleted_elsewhere_is_not_changed_from_the_copy(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    store, elsewhere, _ = recorded
    created = await store.create(communication())
    await elsewhere.delete("Communication", created["id"])
    with pytest.raises(ResourceNotFound):
        await store.modify("Communication", created["id"], to("completed"))
    assert [v.deleted for v in await store.history("Communication", created["id"], limit=5)] == [True, False]


async def test_a_subscription_mark_cleared_elsewhere_is_not_written_back_from_the_copy(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    """Another process dispatched version 1 and cleared its mark: version 2 marks itself, not version 1 again
    (which would be matched a second time, against whatever the Subscriptions are by then)."""
    store, elsewhere, _ = recorded
    created = await store.create(communication())
    await elsewhere.collection("Communication").update_one(
        {"_id": created["id"], f"{RESERVED}.version": 1}, {"$unset": {f"{RESERVED}.pending": ""}}
    )  # what the other process's dispatcher writes once version 1's notifications are queued
    await store.modify("Communication", created["id"], to("completed"))
    stored = await store.collection("Communication").find_one({"_id": created["id"]})
    assert (stored[RESERVED]["version"], stored[RESERVED]["pending"]) == (2, 2)


async def test_a_mark_this_process_cleared_is_cleared_on_its_copy_too(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    store, _, commands = recorded
    created = await store.create(communication())
    await store.collection("Communication").update_one(
        {"_id": created["id"], f"{RESERVED}.version": 1}, {"$unset": {f"{RESERVED}.pending": ""}}
    )
    store.pending_cleared("Communication", [created["id"]], 1)  # as this process's dispatcher says after clearing
    commands.clear()
    await store.modify("Communication", created["id"], to("completed"))
    assert ("find", "Communication") not in commands.seen, "the copy was still good"
    stored = await store.collection("Communication").find_one({"_id": created["id"]})
    assert (stored[RESERVED]["version"], stored[RESERVED]["pending"]) == (2, 2)


async def test_what_a_caller_does_to_the_returned_resource_does_not_reach_history(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    store, _, _ = recorded
    created = await store.create(communication())
    created["payload"][0]["contentString"] = "changed by a caller after the write"
    await store.modify("Communication", created["id"], to("completed"))
    first = await store.vread("Communication", created["id"], "1")
    assert first["payload"] == [{"contentString": "letter"}]


async def test_a_create_in_a_transaction_that_rolled_back_leaves_nothing_to_start_from(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    store, _, _ = recorded
    resource_id = str(uuid.uuid4())

    async def write(session: Any) -> None:
        await store.create(communication(), resource_id=resource_id, session=session)
        raise RuntimeError("the rest of the transaction failed")

    with pytest.raises(RuntimeError):
        await in_transaction(store.database.client, write)
    with pytest.raises(ResourceNotFound):
        await store.modify("Communication", resource_id, to("completed"))
    assert await store.database[history_collection("Communication")].count_documents({}) == 0


async def test_a_create_in_a_committed_transaction_is_started_from_once_said_committed(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    store, _, commands = recorded
    resource_id = str(uuid.uuid4())

    async def write(session: Any) -> None:
        await store.create(communication(), resource_id=resource_id, session=session)

    await in_transaction(store.database.client, write)
    store.committed("Communication", resource_id)
    commands.seen.clear()
    await store.modify("Communication", resource_id, to("completed"))
    assert ("find", "Communication") not in commands.seen
    assert await stored_versions(store, resource_id) == [(1, "in-progress"), (2, "completed")]


async def test_concurrent_changes_from_one_copy_lose_no_version(
    recorded: tuple[ResourceStore, ResourceStore, Commands],
) -> None:
    store, elsewhere, _ = recorded
    created = await store.create(communication())

    async def add_note(writer: ResourceStore, text: str) -> None:
        await writer.modify(
            "Communication", created["id"], lambda c: {**c, "note": [*c.get("note", []), {"text": text}]}
        )

    await asyncio.gather(*(add_note(store if n % 2 else elsewhere, f"n{n}") for n in range(10)))
    current = await store.read("Communication", created["id"])
    assert current["meta"]["versionId"] == "11"
    assert sorted(note["text"] for note in current["note"]) == sorted(f"n{n}" for n in range(10))
    assert [v.version for v in await store.history("Communication", created["id"], limit=20)] == list(range(11, 0, -1))
