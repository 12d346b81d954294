"""Durable fax jobs (collection ``fax_jobs``), written in the same transaction as their Communication.

A job is the promise to deliver one Communication's fax. Its ``state`` says whose turn it is:

- ``queued``: waiting for ``next_attempt_at``; any worker may claim it.
- ``active``: a worker holds a lease (``lease_owner`` until ``lease_expires``) while it prepares
  the document and hands it to the carrier. A worker that dies loses the lease and another
  worker takes over, asking the carrier first whether it already has the attempt.
- ``submitted``: the carrier has it (``carrier_ids`` records its id for each attempt); news comes
  by webhook, or by polling when none has arrived for a while.
- ``done``: delivered or stopped for good.

Every transition is a compare-and-set on the job document (the only coordination between
workers, wherever they run, is the database), and only ever moves ``(attempt, rank)`` forward.

A job that could not be handled (its Communication no longer validates, a field is missing, the
carrier's poll failed) is set aside: ``repair`` records the error, how many times it happened and
when to try again (5 s, then doubling up to 10 minutes). No claim or reconciliation query returns a
job before its ``repair.after``, so one bad record is retried slowly and never crowds out the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING

from ..fhir.models import now
from .status import RANK

COLLECTION = "fax_jobs"
REPAIR_FIRST_DELAY = 5.0  # seconds before a job set aside is tried again; doubles each time
REPAIR_MAX_DELAY = 600.0


@dataclass
class FaxJob:
    """A new outbound fax; ``fax_id`` is the value written in ``Communication.identifier``."""

    fax_id: str
    communication_id: str
    media: str
    quality: str
    from_number: str
    to_number: str
    created: datetime
    kill_at: datetime
    state: str = "queued"
    attempt: int = 1
    status: str = "QUEUED"
    failures: list[dict[str, Any]] = field(default_factory=list)
    # The exact upload the send checked (Z3 version id) and what the Communication says of it: the worker
    # faxes that version only, and refuses bytes whose SHA-1 differs.
    media_version: Any = None
    media_sha1: str | None = None
    media_size: int | None = None
    media_pages: int | None = None

    def document(self) -> dict[str, Any]:
        data = asdict(self)
        data["_id"] = data.pop("fax_id")
        data.update(
            rank=0,
            position=position(self.attempt, 0),
            next_attempt_at=self.created,
            lease_owner=None,
            lease_expires=None,
            carrier_ids={},
            last_news_at=self.created,
            synced=True,
        )
        return data


def position(attempt: int, rank: int) -> int:
    """(attempt, rank) as one number, so "is this forward?" is a single flat range condition."""
    return attempt * 10 + rank


def _not_set_aside(moment: datetime) -> dict[str, Any]:
    """Filter: jobs that are not waiting out a repair back-off (no ``repair``, or its time has come)."""
    return {"repair.after": {"$not": {"$gt": moment}}}


def repair_delay(failures: int) -> timedelta:
    """The back-off after the ``failures``-th failure in a row: 5 s, 10 s, 20 s ... at most 10 minutes."""
    return timedelta(seconds=min(REPAIR_FIRST_DELAY * 2 ** min(failures - 1, 20), REPAIR_MAX_DELAY))


def _forward_of(attempt: int, rank: int) -> dict[str, Any]:
    """Filter: jobs whose (attempt, rank) is before the given one and that are not finished."""
    return {"state": {"$ne": "done"}, "position": {"$lt": position(attempt, rank)}}


class Outbox:
    def __init__(self, database: Any) -> None:
        self.collection = database[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("state", ASCENDING), ("next_attempt_at", ASCENDING)], name="due")
        await self.collection.create_index("communication_id", name="communication", unique=True)
        await self.collection.create_index([("state", ASCENDING), ("lease_expires", ASCENDING)], name="leases")
        await self.collection.create_index([("state", ASCENDING), ("last_news_at", ASCENDING)], name="news")

    async def enqueue(self, job: FaxJob, *, session: Any = None) -> None:
        await self.collection.insert_one(job.document(), session=session)

    async def get(self, fax_id: str) -> dict[str, Any] | None:
        return await self.collection.find_one({"_id": fax_id})

    async def for_communication(self, communication_id: str) -> dict[str, Any] | None:
        return await self.collection.find_one({"communication_id": communication_id})

    # -- claiming ------------------------------------------------------------------------------------

    async def _change(self, where: dict[str, Any], update: dict[str, Any]) -> dict[str, Any] | None:
        """Compare-and-set one job named by ``_id``; the job afterwards, or None when ``where`` did not match.

        This is ``find_one_and_update(..., AFTER)`` done as a keyed update and a keyed read: the embedded
        database runs findAndModify as a scan of the whole collection (100 ms per call at 20,000 jobs,
        measured), the two keyed commands in under a millisecond each. The read may already show a later
        change by someone else, which is only ever further forward.
        """
        result = await self.collection.update_one(where, update)
        if result.matched_count != 1:
            return None
        return await self.collection.find_one({"_id": where["_id"]})

    async def _take(
        self, candidates: dict[str, Any], update: dict[str, Any], sort: list[tuple[str, int]] | None = None
    ) -> dict[str, Any] | None:
        """Claim one job matching ``candidates``: pick one, then compare-and-set it (another taker may win)."""
        for _ in range(10):
            candidate = await self.collection.find_one(candidates, {"_id": 1}, sort=sort)
            if candidate is None:
                return None
            job = await self._change({"_id": candidate["_id"], **candidates}, update)
            if job is not None:
                return job
        return None

    async def claim_due(self, owner: str, lease: timedelta) -> dict[str, Any] | None:
        """Take the next queued job that is due: it becomes PROCESSING for its attempt."""
        moment = now()
        return await self._take(
            {"state": "queued", "next_attempt_at": {"$lte": moment}, **_not_set_aside(moment)},
            {
                "$set": {
                    "state": "active",
                    "status": "PROCESSING",
                    "rank": RANK["PROCESSING"],
                    "lease_owner": owner,
                    "lease_expires": moment + lease,
                    "synced": False,
                },
                "$inc": {"position": RANK["PROCESSING"]},
            },
            sort=[("next_attempt_at", ASCENDING)],
        )

    async def claim_abandoned(self, owner: str, lease: timedelta) -> dict[str, Any] | None:
        """Take over an active job whose worker stopped renewing its lease (it probably died)."""
        moment = now()
        return await self._take(
            {"state": "active", "lease_expires": {"$lt": moment}, **_not_set_aside(moment)},
            {"$set": {"lease_owner": owner, "lease_expires": moment + lease}},
        )

    async def renew(self, job: dict[str, Any], owner: str, lease: timedelta) -> bool:
        """Extend this worker's lease on an attempt it still holds; False when another worker took the job over.

        Checked right before the hand-over to the carrier: a worker whose lease ran out while it prepared the
        document must not submit, because the worker that took over has asked the carrier and submitted itself.
        """
        result = await self.collection.update_one(
            {"_id": job["_id"], "state": "active", "lease_owner": owner, "attempt": job["attempt"]},
            {"$set": {"lease_expires": now() + lease}},
        )
        return result.modified_count == 1

    # -- transitions ---------------------------------------------------------------------------------

    async def record_submission(self, job: dict[str, Any], owner: str, carrier: str, carrier_id: str) -> bool:
        """The carrier accepted the attempt: remember its id before anything else happens."""
        result = await self.collection.update_one(
            {"_id": job["_id"], "state": "active", "lease_owner": owner, "attempt": job["attempt"]},
            {
                "$set": {
                    "state": "submitted",
                    "carrier": carrier,
                    f"carrier_ids.{job['attempt']}": carrier_id,
                    "lease_owner": None,
                    "lease_expires": None,
                    "last_news_at": now(),
                }
            },
        )
        return result.modified_count == 1

    async def advance(self, fax_id: str, attempt: int, status: str, extra: dict[str, Any]) -> dict[str, Any] | None:
        """Move to ``status`` of ``attempt`` if that is forward; returns the job after, or None."""
        rank = RANK[status]
        changes = {
            "attempt": attempt,
            "status": status,
            "rank": rank,
            "position": position(attempt, rank),
            "synced": False,
            "last_news_at": now(),
            **extra,
        }
        return await self._change({"_id": fax_id, **_forward_of(attempt, rank)}, {"$set": changes})

    async def fail_attempt(
        self, fax_id: str, attempt: int, failure: dict[str, Any], retry_at: datetime | None
    ) -> dict[str, Any] | None:
        """Attempt ``attempt`` failed: queue the next one at ``retry_at``, or stop for good if None."""
        if retry_at is None:
            target = {"attempt": attempt, "status": "STOPPED", "rank": RANK["STOPPED"], "state": "done"}
        else:
            target = {
                "attempt": attempt + 1,
                "status": "QUEUED",
                "rank": RANK["QUEUED"],
                "state": "queued",
                "next_attempt_at": retry_at,
            }
        changes = {
            **target,
            "position": position(target["attempt"], target["rank"]),
            "synced": False,
            "last_news_at": now(),
            "finished_at": now(),
            "lease_owner": None,
            "lease_expires": None,
        }
        return await self._change(
            {"_id": fax_id, **_forward_of(target["attempt"], target["rank"])},
            {"$set": changes, "$push": {"failures": failure}},
        )

    async def mark_synced(self, job: dict[str, Any]) -> None:
        await self.collection.update_one(
            {"_id": job["_id"], "attempt": job["attempt"], "rank": job["rank"]},
            {"$set": {"synced": True}, "$unset": {"repair": ""}},
        )

    async def set_aside(self, fax_id: str, error: str, owner: str | None = None) -> datetime:
        """Record that handling the job failed; returns when it may be tried again.

        ``owner``: the worker holding the job's lease keeps it until then, so no other worker
        takes it over earlier.
        """
        job = await self.collection.find_one({"_id": fax_id}, {"repair": 1})
        previous = (job or {}).get("repair") or {}
        failures = (previous.get("failures") if isinstance(previous.get("failures"), int) else 0) + 1
        moment = now()
        after = moment + repair_delay(failures)
        repair = {"failures": failures, "error": error[:1000], "at": moment, "after": after}
        await self.collection.update_one({"_id": fax_id}, {"$set": {"repair": repair}})
        if owner is not None:
            await self.collection.update_one(
                {"_id": fax_id, "state": "active", "lease_owner": owner}, {"$set": {"lease_expires": after}}
            )
        return after

    # -- reconciliation ------------------------------------------------------------------------------

    async def quiet_submissions(self, older_than: datetime, limit: int = 50) -> list[dict[str, Any]]:
        """Submitted jobs with no news since ``older_than`` (a lost webhook, perhaps)."""
        where = {"state": "submitted", "last_news_at": {"$lt": older_than}, **_not_set_aside(now())}
        return await self.collection.find(where).limit(limit).to_list(None)

    async def touch(self, fax_id: str) -> None:
        await self.collection.update_one({"_id": fax_id}, {"$set": {"last_news_at": now()}})

    async def unsynced(self, older_than: datetime, limit: int = 50) -> list[dict[str, Any]]:
        """Jobs whose Communication may not show their latest status yet (a writer died in between)."""
        where = {"synced": False, "last_news_at": {"$lt": older_than}, **_not_set_aside(now())}
        return await self.collection.find(where).limit(limit).to_list(None)

    async def past_kill_time(self, moment: datetime, limit: int = 50) -> list[dict[str, Any]]:
        where = {"state": {"$in": ["queued", "submitted"]}, "kill_at": {"$lt": moment}, **_not_set_aside(moment)}
        return await self.collection.find(where).limit(limit).to_list(None)
