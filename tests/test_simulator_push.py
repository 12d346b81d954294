"""The simulator pushes each fax's news once, skipping steps already superseded, and reads only faxes in the air."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fhir_fax.fax.status import StatusEvent
from fhir_fax.fax.transports.base import Submission
from fhir_fax.fax.transports.simulator import Simulator
from fhir_fax.fhir.models import now


def submission(reference: str) -> Submission:
    return Submission(
        reference=reference, to_number="+16175550143", from_number="+12223334444", quality="standard", pages=1,
        document=b"II*\x00", content_type="image/tiff", media="z3://b/k",
    )  # fmt: skip


async def test_a_fax_whose_steps_all_came_due_is_pushed_once_as_its_last_step(database: Any) -> None:
    simulator = Simulator(database)
    await simulator.ensure_indexes()
    pushed: list[StatusEvent] = []

    async def sink(event: StatusEvent) -> None:
        pushed.append(event)

    carrier_id = await simulator.submit(submission("fax-a:1"))
    await simulator.submit(submission("fax-b:1"))  # still in the air: nothing of it is due yet
    an_hour_ago = now() - timedelta(hours=1)
    await database.simulator_faxes.update_one(
        {"_id": carrier_id}, {"$set": {"submitted_at": an_hour_ago, "next_at": an_hour_ago}}
    )
    await simulator._push_due(sink)
    assert [(e.reference, e.status) for e in pushed] == [("fax-a:1", "DELIVERED")]
    await simulator._push_due(sink)
    assert len(pushed) == 1, "pushed once"
    record = await database.simulator_faxes.find_one({"_id": carrier_id})
    assert record["done"] is True and "next_at" not in record, "a finished fax leaves the push's index"
    assert [e.status for e in await simulator.poll(carrier_id)] == ["PROCESSING", "SENDING", "DELIVERED"]


async def test_steps_due_one_at_a_time_are_each_pushed(database: Any) -> None:
    simulator = Simulator(database)
    await simulator.ensure_indexes()
    pushed: list[str] = []

    async def sink(event: StatusEvent) -> None:
        pushed.append(event.status)

    carrier_id = await simulator.submit(submission("fax-c:1"))
    record = await database.simulator_faxes.find_one({"_id": carrier_id})
    for step in record["timeline"]:  # make each step due in turn, the later ones not yet
        moment = now() - timedelta(seconds=step["after"]) - timedelta(milliseconds=1)
        await database.simulator_faxes.update_one(
            {"_id": carrier_id}, {"$set": {"submitted_at": moment, "next_at": now() - timedelta(milliseconds=1)}}
        )
        await simulator._push_due(sink)
    assert pushed == ["PROCESSING", "SENDING", "DELIVERED"]


async def test_the_push_plans_its_next_wake_at_the_next_step_of_what_it_pushed(database: Any) -> None:
    simulator = Simulator(database)
    await simulator.ensure_indexes()

    async def sink(event: StatusEvent) -> None:
        pass

    carrier_id = await simulator.submit(submission("fax-d:1"))
    record = await database.simulator_faxes.find_one({"_id": carrier_id})
    moment = now() - timedelta(seconds=record["timeline"][0]["after"]) - timedelta(milliseconds=1)
    await database.simulator_faxes.update_one(
        {"_id": carrier_id}, {"$set": {"submitted_at": moment, "next_at": moment}}
    )  # PROCESSING is due, SENDING two seconds later
    following = await simulator._push_due(sink)
    stored = await database.simulator_faxes.find_one({"_id": carrier_id})
    assert stored["emitted"] == 1 and following == stored["next_at"], "it wakes for SENDING, not a second later"
