"""Durable fax jobs (collection ``fax_jobs``), written in the same transaction as their Communication.

A job is the promise to deliver one Communication's fax. Its ``state`` says whose turn it is:

- ``queued``: waiting for ``next_attempt_at``; any worker may claim it.
- ``active``: a worker holds a lease (``lease_owner`` until ``lease_expires``) while it prepares
  the document and hands it to the carrier. A worker that dies loses the lease and another
  worker takes over, asking the carrier first whether it already has the attempt.
- ``submitted``: the carrier has it (``carrier_ids`` records its id for each attempt); news comes
  by webhook, or by polling when none has arrived for a while.
- ``done``: delivered or stopped for good.

The Outbox is the only writer of ``fax_jobs`` (creation, every transition, the rendering it made, the
back-off) and hands out jobs as ``jobs.Job`` read models, never as raw documents. Every transition is a
compare-and-set on the job document (the only coordination between workers, wherever they run, is the
database), and only ever moves ``(attempt, rank)`` (``jobs.Position``) forward.

A job that could not be handled (its Communication no longer validates, a field is missing, the
carrier's poll failed) is set aside: ``repair`` records the error, how many times it happened and
when to try again (5 s, then doubling up to 10 minutes). No claim or reconciliation query returns a
job before its ``repair.after``, so one bad record is retried slowly and never crowds out the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING

from ..fhir.models import now
from .jobs import Job, JobState, OutboundStatus, Position, UnreadableJob

COLLECTION = "fax_jobs"
REPAIR_FIRST_DELAY = 5.0  # seconds before a job set aside is tried again; doubles each time
REPAIR_MAX_DELAY = 600.0
log = logging.getLogger("fhir_fax.outbox")


@dataclass(frozen=True)
class FaxJob:
    """A new outbound fax as the send path enqueues it; ``fax_id`` is what ``Communication.identifier`` says."""

    fax_id: str
    communication_id: str
    media: str
    quality: str
    from_number: str
    to_number: str
    created: datetime
    kill_at: datetime
    state: JobState = JobState.QUEUED
    attempt: int = 1
    status: OutboundStatus = OutboundStatus.QUEUED
    failures: list[dict[str, Any]] = field(default_factory=list)
    # The exact upload the send checked (Z3 version id) and what the Communication says of it: the worker
    # faxes that version only, and refuses bytes whose SHA-1 differs.
    media_version: Any = None
    media_sha1: str | None = None
    media_size: int | None = None
    media_pages: int | None = None
    # A packet's documents and cover (see ``jobs.Job``); ``pages``: the whole fax, cover included.
    documents: list[dict[str, Any]] | None = None
    cover: dict[str, Any] | None = None
    pages: int | None = None
    resend_of: str | None = None

    def document(self) -> dict[str, Any]:
        data = asdict(self)
        data["_id"] = data.pop("fax_id")
        data.update(
            state=self.state.value,
            status=self.status.value,
            rank=self.status.rank,
            position=Position.of(self.attempt, self.status).key,
            next_attempt_at=self.created,
            lease_owner=None,
            lease_expires=None,
            carrier_ids={},
            last_news_at=self.created,
            synced=True,
        )
        return data


def _not_set_aside(moment: datetime) -> dict[str, Any]:
    """Filter: jobs that are not waiting out a repair back-off (no ``repair``, or its time has come)."""
    return {"repair.after": {"$not": {"$gt": moment}}}


def repair_delay(failures: int) -> timedelta:
    """The back-off after the ``failures``-th failure in a row: 5 s, 10 s, 20 s ... at most 10 minutes."""
    return timedelta(seconds=min(REPAIR_FIRST_DELAY * 2 ** min(failures - 1, 20), REPAIR_MAX_DELAY))


def _forward_of(target: Position) -> dict[str, Any]:
    """Filter: jobs whose position is before ``target`` and that are not finished."""
    return {"state": {"$ne": JobState.DONE.value}, "position": {"$lt": target.key}}


def _job(document: Mapping[str, Any] | None) -> Job | None:
    return None if document is None else Job.of(document)


def _held(job: Job, owner: str) -> dict[str, Any]:
    """Filter: ``job``'s attempt, still active and leased by ``owner``."""
    return {"_id": job.id, "state": JobState.ACTIVE.value, "lease_owner": owner, "attempt": job.attempt}


class Outbox:
    def __init__(self, database: Any) -> None:
        self.collection = database[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("state", ASCENDING), ("next_attempt_at", ASCENDING)], name="due")
        await self.collection.create_index("communication_id", name="communication", unique=True)
        await self.collection.create_index([("state", ASCENDING), ("lease_expires", ASCENDING)], name="leases")
        await self.collection.create_index([("state", ASCENDING), ("last_news_at", ASCENDING)], name="news")
        # Reconciliation looks for jobs whose Communication lags (every second): without this it reads them all.
        await self.collection.create_index([("synced", ASCENDING), ("last_news_at", ASCENDING)], name="unsynced")
        # The access gate asks which faxes carry a document (fax/document_faxes.py).
        for name in ("media", "rendered", "documents.media"):
            await self.collection.create_index(name, name=f"carries_{name.replace('.', '_')}")

    async def enqueue(self, job: FaxJob, *, session: Any = None) -> None:
        await self.collection.insert_one(job.document(), session=session)

    async def get(self, fax_id: str) -> Job | None:
        return _job(await self.collection.find_one({"_id": fax_id}))

    async def for_communication(self, communication_id: str) -> Job | None:
        return _job(await self.collection.find_one({"communication_id": communication_id}))

    # -- claiming ------------------------------------------------------------------------------------

    async def _change(self, where: dict[str, Any], update: dict[str, Any]) -> Job | None:
        """Compare-and-set one job named by ``_id``; the job afterwards, or None when ``where`` did not match.

        This is ``find_one_and_update(..., AFTER)`` done as a keyed update and a keyed read: the embedded
        database runs findAndModify as a scan of the whole collection (100 ms per call at 20,000 jobs,
        measured), the two keyed commands in under a millisecond each. The read may already show a later
        change by someone else, which is only ever further forward.
        """
        result = await self.collection.update_one(where, update)
        if result.matched_count != 1:
            return None
        return _job(await self.collection.find_one({"_id": where["_id"]}))

    async def _take(
        self, candidates: dict[str, Any], update: dict[str, Any], sort: list[tuple[str, int]] | None = None
    ) -> Job | None:
        """Claim one job matching ``candidates``: pick one, then compare-and-set it (another taker may win)."""
        for _ in range(10):
            candidate = await self.collection.find_one(candidates, {"_id": 1}, sort=sort)
            if candidate is None:
                return None
            try:
                job = await self._change({"_id": candidate["_id"], **candidates}, update)
            except UnreadableJob as problem:  # taken, but not a job: held (lease) until its back-off ends
                await self.put_aside_unreadable(problem, owner=update["$set"].get("lease_owner"))
                raise
            if job is not None:
                return job
        return None

    async def claim_due(self, owner: str, lease: timedelta) -> Job | None:
        """Take the next queued job that is due: it becomes PROCESSING for its attempt."""
        moment = now()
        processing = OutboundStatus.PROCESSING
        return await self._take(
            {"state": JobState.QUEUED.value, "next_attempt_at": {"$lte": moment}, **_not_set_aside(moment)},
            {
                "$set": {
                    "state": JobState.ACTIVE.value,
                    "status": processing.value,
                    "rank": processing.rank,
                    "lease_owner": owner,
                    "lease_expires": moment + lease,
                    "synced": False,
                },
                "$inc": {"position": processing.rank - OutboundStatus.QUEUED.rank},  # (attempt, QUEUED) -> PROCESSING
            },
            sort=[("next_attempt_at", ASCENDING)],
        )

    async def claim_abandoned(self, owner: str, lease: timedelta) -> Job | None:
        """Take over an active job whose worker stopped renewing its lease (it probably died)."""
        moment = now()
        return await self._take(
            {"state": JobState.ACTIVE.value, "lease_expires": {"$lt": moment}, **_not_set_aside(moment)},
            {"$set": {"lease_owner": owner, "lease_expires": moment + lease}},
        )

    async def renew(self, job: Job, owner: str, lease: timedelta) -> bool:
        """Extend this worker's lease on an attempt it still holds; False when another worker took the job over.

        Checked right before the hand-over to the carrier: a worker whose lease ran out while it prepared the
        document must not submit, because the worker that took over has asked the carrier and submitted itself.
        """
        result = await self.collection.update_one(_held(job, owner), {"$set": {"lease_expires": now() + lease}})
        return bool(result.modified_count == 1)

    # -- transitions ---------------------------------------------------------------------------------

    async def record_submission(self, job: Job, owner: str, carrier: str, carrier_id: str) -> bool:
        """The carrier accepted the attempt: remember its id before anything else happens."""
        result = await self.collection.update_one(
            _held(job, owner),
            {
                "$set": {
                    "state": JobState.SUBMITTED.value,
                    "carrier": carrier,
                    f"carrier_ids.{job.attempt}": carrier_id,
                    "lease_owner": None,
                    "lease_expires": None,
                    "last_news_at": now(),
                }
            },
        )
        return bool(result.modified_count == 1)

    async def advance(self, fax_id: str, attempt: int, status: OutboundStatus, extra: dict[str, Any]) -> Job | None:
        """Move to ``status`` of ``attempt`` if that is forward; returns the job after, or None."""
        target = Position.of(attempt, status)
        changes = {
            "attempt": attempt,
            "status": status.value,
            "rank": target.rank,
            "position": target.key,
            "synced": False,
            "last_news_at": now(),
            **extra,
        }
        return await self._change({"_id": fax_id, **_forward_of(target)}, {"$set": changes})

    async def fail_attempt(
        self,
        fax_id: str,
        attempt: int,
        failure: dict[str, Any],
        retry_at: datetime | None,
        *,
        holder: str | None = None,
    ) -> Job | None:
        """Attempt ``attempt`` failed: queue the next one at ``retry_at``, or stop for good if None."""
        if retry_at is None:
            status, state = OutboundStatus.STOPPED, JobState.DONE
            target = Position.of(attempt, status)
            moves: dict[str, Any] = {}
        else:
            status, state = OutboundStatus.QUEUED, JobState.QUEUED
            target = Position.of(attempt + 1, status)
            moves = {"next_attempt_at": retry_at}
        changes = {
            "attempt": target.attempt,
            "status": status.value,
            "rank": target.rank,
            "state": state.value,
            **moves,
            "position": target.key,
            "synced": False,
            "last_news_at": now(),
            "finished_at": now(),
            "lease_owner": None,
            "lease_expires": None,
        }
        held = {"state": JobState.ACTIVE.value, "lease_owner": holder} if holder is not None else {}
        return await self._change(
            {"_id": fax_id, **_forward_of(target), **held},
            {"$set": changes, "$push": {"failures": failure}},
        )

    async def mark_synced(self, job: Job) -> None:
        """``job``'s Communication shows its status (unless the job has moved on since)."""
        await self.collection.update_one(
            {"_id": job.id, "attempt": job.attempt, "rank": job.position.rank},
            {"$set": {"synced": True}, "$unset": {"repair": ""}},
        )

    async def record_rendering(self, fax_id: str, rendering: str) -> None:
        """Where the job's fax-line rendering was kept (a Z3 location), so the access gate knows it is the job's."""
        await self.collection.update_one({"_id": fax_id}, {"$set": {"rendered": rendering}})

    async def set_aside(self, fax_id: str, error: str, owner: str | None = None) -> datetime:
        """Record that handling the job failed; returns when it may be tried again.

        ``owner``: the worker holding the job's lease keeps it until then, so no other worker
        takes it over earlier.
        """
        stored = await self.collection.find_one({"_id": fax_id}, {"repair": 1})
        previous = (stored or {}).get("repair") or {}
        count = previous.get("failures")
        failures = (count if isinstance(count, int) else 0) + 1
        moment = now()
        after = moment + repair_delay(failures)
        repair = {"failures": failures, "error": error[:1000], "at": moment, "after": after}
        await self.collection.update_one({"_id": fax_id}, {"$set": {"repair": repair}})
        if owner is not None:
            held = {"_id": fax_id, "state": JobState.ACTIVE.value, "lease_owner": owner}
            await self.collection.update_one(held, {"$set": {"lease_expires": after}})
        return after

    # -- reconciliation ------------------------------------------------------------------------------

    async def quiet_submissions(self, older_than: datetime, limit: int = 50) -> list[Job]:
        """Submitted jobs with no news since ``older_than`` (a lost webhook, perhaps)."""
        where = {"state": JobState.SUBMITTED.value, "last_news_at": {"$lt": older_than}, **_not_set_aside(now())}
        return await self._list(where, limit)

    async def touch(self, fax_id: str) -> None:
        await self.collection.update_one({"_id": fax_id}, {"$set": {"last_news_at": now()}})

    async def unsynced(self, older_than: datetime, limit: int = 50) -> list[Job]:
        """Jobs whose Communication may not show their latest status yet (a writer died in between)."""
        where = {"synced": False, "last_news_at": {"$lt": older_than}, **_not_set_aside(now())}
        return await self._list(where, limit)

    async def past_kill_time(self, moment: datetime, limit: int = 50) -> list[Job]:
        """Jobs not with a worker and not finished whose kill time has passed."""
        waiting = [JobState.QUEUED.value, JobState.SUBMITTED.value]
        where = {"state": {"$in": waiting}, "kill_at": {"$lt": moment}, **_not_set_aside(moment)}
        return await self._list(where, limit)

    async def _list(self, where: dict[str, Any], limit: int) -> list[Job]:
        """The jobs matching ``where``; damaged records among them are set aside (back-off) and left out."""
        jobs = []
        for document in await self.collection.find(where).limit(limit).to_list(None):
            try:
                jobs.append(Job.of(document))
            except UnreadableJob as problem:
                await self.put_aside_unreadable(problem)
        return jobs

    async def put_aside_unreadable(self, problem: UnreadableJob, owner: str | None = None) -> None:
        """Set aside a record that is not a job, so it is retried slowly and never crowds out the rest."""
        after = await self.set_aside(problem.fax_id, str(problem), owner)
        log.warning(
            "fax %s (Communication/%s): %s Retry after %s",
            problem.fax_id, problem.communication_id, problem, after.isoformat(),
            extra={"fax": problem.fax_id, "communication": problem.communication_id, "retry_at": after.isoformat()},
        )  # fmt: skip
