"""The built-in carrier: behaves like a real one without an account.

It accepts a fax, then reports processing, sending and a result after delays that grow
with the page count and the quality, divided by ``FHIR_FAX_SIMULATOR_SPEED``. Its own
records live in the database (``simulator_faxes``), and each fax's timeline is fixed when it
is submitted, so the simulator survives restarts just as a real carrier outlives our
servers. Destination numbers choose the outcome:

| number ends in | outcome |
|---|---|
| 0002 | BUSY |
| 0003 | NO_ANSWER |
| 0004 | FAILED |
| 0486 | SIP 486 (busy here) |
| 0005 | UNKNOWN (a failure with no reason) |
| 0006 | BUSY on the first attempt, delivered on later ones |
| anything else | delivered |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import OperationFailure

from ....db import stop_if_cancelled
from ....fhir.models import now
from ...status import FAILURE_MESSAGES, Failure, StatusEvent
from ..base import Capabilities, EventSink, Submission

log = logging.getLogger("fhir_fax.simulator")

COLLECTION = "simulator_faxes"
SECONDS_PER_PAGE = {"standard": 10.0, "fine": 20.0, "superfine": 40.0}
PROCESSING_AFTER, SENDING_AFTER = 2.0, 4.0
OUTCOMES = {"0002": "BUSY", "0003": "NO_ANSWER", "0004": "FAILED", "0486": "486", "0005": "UNKNOWN"}


def planned_outcome(to_number: str, attempt: int) -> str | None:
    """The failure code the simulator will report for this attempt, or None for delivered."""
    suffix = to_number[-4:]
    if suffix == "0006":
        return "BUSY" if attempt == 1 else None
    return OUTCOMES.get(suffix)


class Simulator:
    name = "simulator"
    capabilities = Capabilities(takes_tiff=True)  # it receives the fax-line rendering, as a fax modem would

    def __init__(self, database: Any, speed: float = 1.0, tick: float = 0.05) -> None:
        self.collection = database[COLLECTION]
        self.speed = speed
        self.tick = tick
        self._task: asyncio.Task[None] | None = None

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("reference", name="reference")
        # Only faxes still in the air have a next step (``next_at``): the push reads those, never the finished.
        await self.collection.create_index("next_at", name="next_step", sparse=True)
        with contextlib.suppress(OperationFailure):
            await self.collection.drop_index("due")  # (done, next_at): read every finished fax's entry

    async def start(self, sink: EventSink) -> None:
        await self.ensure_indexes()
        self._task = asyncio.create_task(self._push(sink), name="fhir-fax-simulator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, submission: Submission) -> str:
        attempt = int(submission.reference.rsplit(":", 1)[1])
        failure = planned_outcome(submission.to_number, attempt)
        result_after = SENDING_AFTER + submission.pages * SECONDS_PER_PAGE[submission.quality]
        timeline: list[dict[str, Any]] = [
            {"after": PROCESSING_AFTER, "status": "PROCESSING"},
            {"after": SENDING_AFTER, "status": "SENDING"},
            {"after": result_after, "status": "FAILED" if failure else "DELIVERED", "failure": failure},
        ]
        submitted = now()
        carrier_id = f"sim-{uuid.uuid4()}"
        await self.collection.insert_one(
            {
                "_id": carrier_id,
                "reference": submission.reference,
                "to": submission.to_number,
                "pages": submission.pages,
                "submitted_at": submitted,
                "timeline": timeline,
                "emitted": 0,
                "next_at": self._at(submitted, timeline[0]["after"]),
                "done": False,
            }
        )
        return carrier_id

    async def find(self, reference: str, to_number: str, since: datetime) -> str | None:
        record = await self.collection.find_one({"reference": reference}, {"_id": 1})
        return record["_id"] if record else None

    async def poll(self, carrier_id: str) -> list[StatusEvent]:
        record = await self.collection.find_one({"_id": carrier_id})
        if record is None:
            return []
        moment = now()
        return [
            self._event(record, step)
            for step in record["timeline"]
            if self._at(record["submitted_at"], step["after"]) <= moment
        ]

    def _at(self, submitted: datetime, after: float) -> datetime:
        return submitted + timedelta(seconds=after / self.speed)

    def _event(self, record: dict[str, Any], step: dict[str, Any]) -> StatusEvent:
        at = self._at(record["submitted_at"], step["after"])
        failure = None
        if step["status"] == "FAILED":
            code = step["failure"]
            failure = Failure(code, FAILURE_MESSAGES.get(code, "The fax could not be sent."))
        pages = record["pages"] if step["status"] == "DELIVERED" else None
        return StatusEvent(record["reference"], step["status"], at, pages=pages, failure=failure, source="simulator")

    async def _push(self, sink: EventSink) -> None:
        """Deliver each due step once (compare-and-set on ``emitted``, so several processes may run this)."""
        while True:
            try:
                await self._push_due(sink)
            except Exception:  # keep the simulated carrier alive; the poller reconciles what was missed
                stop_if_cancelled()
                log.exception("simulator push failed")
            await asyncio.sleep(self.tick)

    async def _push_due(self, sink: EventSink) -> None:
        moment = now()
        due = await self.collection.find({"next_at": {"$lte": moment}}).limit(100).to_list(None)
        for record in due:
            index = record["emitted"]
            step = record["timeline"][index]
            following = index + 1
            done = following >= len(record["timeline"])
            update: dict[str, Any] = {"$set": {"emitted": following, "done": done}}
            if done:
                update["$unset"] = {"next_at": ""}
            else:
                update["$set"]["next_at"] = self._at(record["submitted_at"], record["timeline"][following]["after"])
            claimed = await self.collection.update_one({"_id": record["_id"], "emitted": index}, update)
            if claimed.modified_count == 1:
                await sink(self._event(record, step))
