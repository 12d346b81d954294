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

Like a real carrier's status callbacks, its news is pushed when it happens: the push wakes at the next
step's time (never more often than ``tick``, and at least every ``IDLE_WAIT`` for faxes submitted by other
processes), so an idle simulator costs one indexed query a second. When several steps of one fax are due
at one wake (a fast clock), only the latest is pushed: the earlier ones are already superseded, as a
carrier's last state is what a late callback carries. ``poll`` still reports every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import OperationFailure

from ....db import stop_if_cancelled, wait_for_event
from ....fhir.models import now
from ....fhir.store import as_utc
from ...status import FAILURE_MESSAGES, Failure, StatusEvent
from ..base import Capabilities, EventSink, Submission

log = logging.getLogger("fhir_fax.simulator")

COLLECTION = "simulator_faxes"
SECONDS_PER_PAGE = {"standard": 10.0, "fine": 20.0, "superfine": 40.0}
PROCESSING_AFTER, SENDING_AFTER = 2.0, 4.0
PUSH_AT_ONCE = 16  # faxes whose news is applied at once
IDLE_WAIT = 1.0  # seconds: the longest the push sleeps (faxes another process submitted are found by then)
OUTCOMES = {"0002": "BUSY", "0003": "NO_ANSWER", "0004": "FAILED", "0486": "486", "0005": "UNKNOWN"}


def planned_outcome(to_number: str, attempt: int) -> str | None:
    """The failure code the simulator will report for this attempt, or None for delivered."""
    suffix = to_number[-4:]
    if suffix == "0006":
        return "BUSY" if attempt == 1 else None
    return OUTCOMES.get(suffix)


class Simulator:
    name = "simulator"
    # It receives the fax-line rendering, as a fax modem would; faxes to our numbers: ``inbound.simulated_fax``.
    capabilities = Capabilities(takes_tiff=True, inbound=True)

    def __init__(self, database: Any, speed: float = 1.0, tick: float = 0.05) -> None:
        self.collection = database[COLLECTION]
        self.speed = speed
        self.tick = tick
        self._task: asyncio.Task[None] | None = None
        self._soonest: datetime | None = None  # the first step of a fax submitted since the push last looked
        self._submitted = asyncio.Event()

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
        first = self._at(submitted, timeline[0]["after"])
        self._soonest = first if self._soonest is None else min(self._soonest, first)
        self._submitted.set()
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
        """Deliver due steps (compare-and-set on ``emitted``, so several processes may run this), then sleep
        until the next step is due, a fax is submitted, or ``IDLE_WAIT`` has passed."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            following: datetime | None = None
            try:
                following = await self._push_due(sink)
            except Exception:  # keep the simulated carrier alive; the poller reconciles what was missed
                stop_if_cancelled()
                log.exception("simulator push failed")
            await self._sleep_until(following, started)

    async def _sleep_until(self, following: datetime | None, started: float) -> None:
        loop = asyncio.get_running_loop()
        self._soonest = None
        self._submitted.clear()
        while True:
            soonest = min((t for t in (following, self._soonest) if t is not None), default=None)
            wait = IDLE_WAIT if soonest is None else min(IDLE_WAIT, (soonest - now()).total_seconds())
            wait = max(wait, self.tick - (loop.time() - started))  # never more often than ``tick``
            if wait <= 0:
                return
            if not await wait_for_event(self._submitted, wait):
                return
            self._submitted.clear()  # a submission: its first step may come before the planned wake

    async def _push_due(self, sink: EventSink) -> datetime | None:
        """Push what is due; returns when the next step not yet due is (within ``IDLE_WAIT``), if any."""
        moment = now()
        horizon = moment + timedelta(seconds=IDLE_WAIT)
        pending = await self.collection.find({"next_at": {"$lte": horizon}}).sort("next_at", 1).limit(200).to_list(None)
        due = [record for record in pending if as_utc(record["next_at"]) <= moment]
        upcoming = [as_utc(r["next_at"]) for r in pending if as_utc(r["next_at"]) > moment]
        for start in range(0, len(due), PUSH_AT_ONCE):  # news of different faxes is independent: applied together
            batch = due[start : start + PUSH_AT_ONCE]
            results = await asyncio.gather(*(self._push_record(r, moment, sink) for r in batch), return_exceptions=True)
            for result in results:
                if isinstance(result, datetime):  # the pushed fax's next step
                    upcoming.append(result)
                elif isinstance(result, Exception):  # one fax's news failed: the others' still went; polls catch up
                    log.error("simulator push failed", exc_info=result)
                elif isinstance(result, BaseException):
                    raise result
        return min(upcoming, default=None)

    async def _push_record(self, record: dict[str, Any], moment: datetime, sink: EventSink) -> datetime | None:
        """Push the fax's latest due step; returns when its next step is due (None when it is finished)."""
        timeline, submitted = record["timeline"], record["submitted_at"]
        index = record["emitted"]
        while index + 1 < len(timeline) and self._at(submitted, timeline[index + 1]["after"]) <= moment:
            index += 1  # a later step is due as well: the earlier one is superseded
        step = timeline[index]
        following = index + 1
        done = following >= len(timeline)
        update: dict[str, Any] = {"$set": {"emitted": following, "done": done}}
        next_at = None if done else self._at(submitted, timeline[following]["after"])
        if next_at is None:
            update["$unset"] = {"next_at": ""}
        else:
            update["$set"]["next_at"] = next_at
        claimed = await self.collection.update_one({"_id": record["_id"], "emitted": record["emitted"]}, update)
        if claimed.modified_count == 1:
            await sink(self._event(record, step))
        return next_at
