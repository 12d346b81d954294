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

Nothing periodic reads finished jobs. What must happen next to a job is a due time, and every periodic
query is one range on one of them (a sparse index each, so a finished job is in none of them and the
history of faxes ever sent costs nothing):

- ``due_at``: when a worker may take the job: a queued job's next attempt, an active job's lease end
  (a takeover). Only queued and active jobs have it.
- ``check_at``: when reconciliation must look at a waiting job: a queued job's kill time; a submitted
  job's next poll (no news for ``stuck_after``) or its kill time, whichever comes first.
- ``sync_at``: while the Communication may lag behind the job (``synced=false``): when to bring it in
  line if the writer that moved the job did not (it died in between).

A job that could not be handled (its Communication no longer validates, a field is missing, the
carrier's poll failed) is set aside: ``repair`` records the error, how many times it happened and
when to try again (5 s, then doubling up to 10 minutes), and each of its due times moves to then. So
no claim or reconciliation query returns it before its ``repair.after``, and one bad record is retried
slowly and never crowds out the rest.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import OperationFailure

from ..db import GroupWrites, maybe_await, stop_if_cancelled
from ..fhir.models import now
from ..fhir.store import as_utc
from .jobs import Job, JobState, OutboundStatus, Position, UnreadableJob

COLLECTION = "fax_jobs"
REPAIR_FIRST_DELAY = 5.0  # seconds before a job set aside is tried again; doubles each time
REPAIR_MAX_DELAY = 600.0
HANDED_KEPT = 4096  # jobs handed over by this process kept in memory for the news that follows
SYNC_GRACE = timedelta(seconds=5)  # a Communication lagging this long behind its job is repaired by reconciliation
DUE_FIELDS = ("due_at", "check_at", "sync_at")
MARK_LINGER = 0.02  # seconds synced marks coming together wait for each other (``GroupWrites.linger``)
OBSOLETE_INDEXES = ("due", "leases", "news", "unsynced")  # flags and states scanned before due times existed
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
            due_at=self.created,
            check_at=self.kill_at,
            lease_owner=None,
            lease_expires=None,
            carrier_ids={},
            last_news_at=self.created,
            synced=True,
        )
        return data


def repair_delay(failures: int) -> timedelta:
    """The back-off after the ``failures``-th failure in a row: 5 s, 10 s, 20 s ... at most 10 minutes."""
    return timedelta(seconds=min(REPAIR_FIRST_DELAY * 2 ** min(failures - 1, 20), REPAIR_MAX_DELAY))


def _forward_of(target: Position) -> dict[str, Any]:
    """Filter: jobs whose position is before ``target`` and that are not finished."""
    return {"state": {"$ne": JobState.DONE.value}, "position": {"$lt": target.key}}


@dataclass
class Claimed:
    """What one claim took: the jobs to attempt, and how many records it took but set aside (not jobs)."""

    jobs: list[Job] = field(default_factory=list)
    set_aside: int = 0
    takeovers: set[str] = field(default_factory=set)  # jobs taken over from a lapsed lease (the carrier may have them)
    read: int = 0  # due jobs the claim read (fewer than asked: none was left due at that moment)

    def __bool__(self) -> bool:
        return bool(self.jobs) or self.set_aside > 0


def _unsynced(moment: datetime) -> dict[str, Any]:
    """Changes: the Communication lags behind the job from now on, until ``mark_synced``."""
    return {"synced": False, "sync_at": moment + SYNC_GRACE}


def next_check(moment: datetime, quiet: timedelta, kill_at: datetime) -> datetime:
    """When reconciliation looks at a submitted job next: after ``quiet`` without news, or at its kill time."""
    return min(moment + quiet, as_utc(kill_at))


def _job(document: Mapping[str, Any] | None) -> Job | None:
    return None if document is None else Job.of(document)


def _held(job: Job, owner: str) -> dict[str, Any]:
    """Filter: ``job``'s attempt, still active and leased by ``owner``."""
    return {"_id": job.id, "state": JobState.ACTIVE.value, "lease_owner": owner, "attempt": job.attempt}


class Outbox:
    def __init__(self, database: Any) -> None:
        self.collection = database[COLLECTION]
        # Jobs this process handed over, as it wrote them (newest last, ``HANDED_KEPT`` at most): news of one
        # moves it with a single compare-and-set on the position it knows, and no read-back (``advance``).
        self._handed: OrderedDict[str, Job] = OrderedDict()
        # Told when a job enqueued by this process is committed (``committed``): a worker in this process
        # listens, so it takes the job at once rather than at its next poll (workers elsewhere find it then).
        self.listeners: list[Callable[[], None]] = []
        # "The Communication shows this status" marks made while one is being written go together in the next.
        self._synced: GroupWrites[tuple[str, int, int]] = GroupWrites(self._write_synced, linger=MARK_LINGER)

    async def close(self) -> None:
        """Write the synced marks on their way (the server is stopping)."""
        await self._synced.close()

    def committed(self) -> None:
        """A transaction that enqueued a job has committed: wake the workers of this process."""
        for listener in self.listeners:
            listener()

    async def ensure_indexes(self) -> None:
        for name in DUE_FIELDS:  # sparse: a finished job is in none of them
            await self.collection.create_index(name, name=name, sparse=True)
        await self.collection.create_index("communication_id", name="communication", unique=True)
        # The access gate asks which faxes carry a document (fax/document_faxes.py).
        for name in ("media", "rendered", "documents.media"):
            await self.collection.create_index(name, name=f"carries_{name.replace('.', '_')}")
        existing = {index["name"] async for index in await maybe_await(self.collection.list_indexes())}
        obsolete = [name for name in OBSOLETE_INDEXES if name in existing]
        if obsolete:  # written by a version before due times: give its jobs theirs, once (a read of every job)
            await self.schedule_unscheduled()
        for name in obsolete:
            with contextlib.suppress(OperationFailure):
                await self.collection.drop_index(name)

    async def schedule_unscheduled(self) -> None:
        """Give jobs written before due times existed theirs (the first start of this version only)."""
        unfinished = [JobState.QUEUED.value, JobState.ACTIVE.value, JobState.SUBMITTED.value]
        old = {"state": {"$in": unfinished}, "due_at": {"$exists": False}, "check_at": {"$exists": False}}
        async for document in self.collection.find(old):
            state, moment = document.get("state"), now()
            changes: dict[str, Any] = {}
            if state == JobState.QUEUED.value:
                changes = {"due_at": document.get("next_attempt_at") or moment, "check_at": document.get("kill_at")}
            elif state == JobState.ACTIVE.value:
                changes = {"due_at": document.get("lease_expires") or moment}
            else:
                changes = {"check_at": moment}
            await self.collection.update_one({"_id": document["_id"]}, {"$set": changes})
        lagging = {"synced": False, "sync_at": {"$exists": False}}
        await self.collection.update_many(lagging, {"$set": {"sync_at": now()}})

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

    async def due(self, moment: datetime, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` jobs a worker may take now (queued and due, or active with a lapsed lease), oldest first."""
        cursor = self.collection.find({"due_at": {"$lte": moment}}).sort("due_at", ASCENDING).limit(limit)
        found: list[dict[str, Any]] = await cursor.to_list(None)
        return found

    async def claim(self, owner: str, lease: timedelta, limit: int = 1) -> Claimed:
        """Take up to ``limit`` due jobs: one read for all of them, then a compare-and-set on each.

        A queued job becomes PROCESSING for its attempt; an active one whose lease lapsed (its worker probably
        died) is taken over. Another worker may win any of them, which is then simply not in the result.
        A record that is not a job is taken (held under this worker's lease until its back-off ends) and set
        aside. Each claim holds its own lease (``owner`` plus a token): when a job is taken over, even by the
        same worker (its attempt outlived the lease), the first holder's renewal fails and it stands down.
        """
        moment = now()
        claimed = Claimed()
        due = await self.due(moment, limit)
        claimed.read = len(due)
        for document in due:
            token = f"{owner}/{uuid.uuid4().hex[:8]}"
            job = await self._claim_one(document, token, lease, moment, claimed)
            if job is not None:
                claimed.jobs.append(job)
        return claimed

    async def _claim_one(
        self, document: dict[str, Any], owner: str, lease: timedelta, moment: datetime, claimed: Claimed
    ) -> Job | None:
        state, expires = document.get("state"), moment + lease
        where: dict[str, Any] = {"_id": document["_id"], "state": state, "due_at": {"$lte": moment}}
        changes: dict[str, Any] = {"lease_owner": owner, "lease_expires": expires, "due_at": expires}
        update: dict[str, Any]
        if state == JobState.QUEUED.value:
            processing = OutboundStatus.PROCESSING
            where["attempt"] = document.get("attempt")
            changes.update(state=JobState.ACTIVE.value, status=processing.value, rank=processing.rank)
            changes.update(_unsynced(moment))
            # (attempt, QUEUED) -> (attempt, PROCESSING)
            update = {"$set": changes, "$unset": {"check_at": ""}, "$inc": {"position": processing.rank}}
            position = {"position": int(document.get("position", 0)) + processing.rank}
        elif state == JobState.ACTIVE.value:
            where["lease_expires"] = {"$lt": moment}
            update, position = {"$set": changes}, {}
            claimed.takeovers.add(str(document["_id"]))
        else:  # finished or handed over since it was scheduled: it has nothing left to claim
            await self.collection.update_one({"_id": document["_id"], "state": state}, {"$unset": {"due_at": ""}})
            return None
        result = await self.collection.update_one(where, update)
        if result.matched_count != 1:
            return None
        try:
            return Job.of({**document, **changes, **position})  # exactly what the compare-and-set wrote
        except UnreadableJob as problem:  # taken, but not a job: held (lease) until its back-off ends
            await self.put_aside_unreadable(problem, owner=owner)
            claimed.set_aside += 1
            return None

    async def renew(self, job: Job, owner: str, lease: timedelta) -> bool:
        """Extend this worker's lease on an attempt it still holds; False when another worker took the job over.

        Checked right before the hand-over to the carrier: a worker whose lease ran out while it prepared the
        document must not submit, because the worker that took over has asked the carrier and submitted itself.
        """
        expires = now() + lease
        result = await self.collection.update_one(
            _held(job, owner), {"$set": {"lease_expires": expires, "due_at": expires}}
        )
        return bool(result.modified_count == 1)

    # -- transitions ---------------------------------------------------------------------------------

    async def record_submission(
        self, job: Job, owner: str, carrier: str, carrier_id: str, quiet: timedelta, *, shown: bool = False
    ) -> bool:
        """The carrier accepted the attempt: remember its id before anything else happens.

        Reconciliation looks at the job again after ``quiet`` without news (a poll), or at its kill time.
        ``shown``: the Communication shows ``job``'s status; recorded here too (``mark_synced`` in the same
        write) unless news moved the job on meanwhile.
        """
        moment = now()
        changes = {
            "state": JobState.SUBMITTED.value,
            "carrier": carrier,
            f"carrier_ids.{job.attempt}": carrier_id,
            "lease_owner": None,
            "lease_expires": None,
            "last_news_at": moment,
            "check_at": next_check(moment, quiet, job.kill_at),
        }
        if shown:
            in_line = {**_held(job, owner), "rank": job.position.rank}
            synced = {"$set": {**changes, "synced": True}, "$unset": {"due_at": "", "sync_at": "", "repair": ""}}
            if (await self.collection.update_one(in_line, synced)).modified_count == 1:
                self._remember(job, carrier, carrier_id, moment, synced=True)
                return True
        result = await self.collection.update_one(_held(job, owner), {"$set": changes, "$unset": {"due_at": ""}})
        if result.modified_count != 1:
            return False
        self._remember(job, carrier, carrier_id, moment, synced=job.synced)
        return True

    def _remember(self, job: Job, carrier: str, carrier_id: str, moment: datetime, *, synced: bool) -> None:
        """Keep the job as the hand-over left it, for ``advance``."""
        handed = replace(
            job,
            state=JobState.SUBMITTED,
            carrier=carrier,
            carrier_ids={**job.carrier_ids, str(job.attempt): carrier_id},
            lease_owner=None,
            lease_expires=None,
            last_news_at=moment,
            synced=synced,
        )
        self._handed[job.id] = handed
        self._handed.move_to_end(job.id)
        while len(self._handed) > HANDED_KEPT:
            self._handed.popitem(last=False)

    async def advance(self, fax_id: str, attempt: int, status: OutboundStatus, extra: dict[str, Any]) -> Job | None:
        """Move to ``status`` of ``attempt`` if that is forward; returns the job after, or None."""
        target = Position.of(attempt, status)
        moment = now()
        changes = {
            "attempt": attempt,
            "status": status.value,
            "rank": target.rank,
            "position": target.key,
            **_unsynced(moment),
            "last_news_at": moment,
            **extra,
        }
        update: dict[str, Any] = {"$set": changes}
        if target.final:  # nothing is due for a finished job but bringing its Communication in line
            update["$unset"] = {"due_at": "", "check_at": ""}
        known = self._handed.pop(fax_id, None)
        if known is not None and known.position >= target:  # positions only move forward: stale news, no write
            self._handed[fax_id] = known
            return None
        if known is not None:
            # Exactly the position this process left it at: the job is what it knows plus these changes.
            where = {"_id": fax_id, "position": known.position.key, "state": {"$ne": JobState.DONE.value}}
            if (await self.collection.update_one(where, update)).matched_count == 1:
                after = replace(
                    known,
                    attempt=attempt,
                    status=status,
                    state=JobState(extra["state"]) if "state" in extra else known.state,
                    finished_at=extra.get("finished_at", known.finished_at),
                    pages=extra.get("pages", known.pages),
                    last_news_at=moment,
                    synced=False,
                )
                if after.state is not JobState.DONE:
                    self._handed[fax_id] = after
                return after
        return await self._change({"_id": fax_id, **_forward_of(target)}, update)  # moved by someone else, or unknown

    async def fail_attempt(
        self,
        fax_id: str,
        attempt: int,
        failure: dict[str, Any],
        retry_at: datetime | None,
        *,
        holder: str | None = None,
        kill_at: datetime | None = None,
    ) -> Job | None:
        """Attempt ``attempt`` failed: queue the next one at ``retry_at``, or stop for good if None.

        ``kill_at``: the fax's kill time, when reconciliation stops a retry no worker took in time (without it,
        reconciliation looks at the retry when it is due).
        """
        moment = now()
        self._handed.pop(fax_id, None)  # its position moves here: the next news is read back as usual
        unset: dict[str, Any] = {}
        if retry_at is None:
            status, state = OutboundStatus.STOPPED, JobState.DONE
            target = Position.of(attempt, status)
            moves: dict[str, Any] = {}
            unset = {"due_at": "", "check_at": ""}
        else:
            status, state = OutboundStatus.QUEUED, JobState.QUEUED
            target = Position.of(attempt + 1, status)
            moves = {"next_attempt_at": retry_at, "due_at": retry_at, "check_at": kill_at or retry_at}
        changes = {
            "attempt": target.attempt,
            "status": status.value,
            "rank": target.rank,
            "state": state.value,
            **moves,
            "position": target.key,
            **_unsynced(moment),
            "last_news_at": moment,
            "finished_at": moment,
            "lease_owner": None,
            "lease_expires": None,
        }
        held = {"state": JobState.ACTIVE.value, "lease_owner": holder} if holder is not None else {}
        update: dict[str, Any] = {"$set": changes, "$push": {"failures": failure}}
        if unset:
            update["$unset"] = unset
        return await self._change({"_id": fax_id, **_forward_of(target), **held}, update)

    async def mark_synced(self, job: Job) -> None:
        """``job``'s Communication shows its status (unless the job has moved on since).

        Marks made while another is being written (and, while they come together, within ``MARK_LINGER``) are
        written together, one write per (attempt, status) among them: a burst of news (the carrier's callbacks of many
        faxes at once) costs a write or two, not one per fax. Until the mark is written the job's ``sync_at``
        stands, so a crash meanwhile only means reconciliation finds the Communication already in line; for the
        same reason a mark that could not be written is logged, never raised (it would fail every caller whose
        mark shared the write).
        """
        try:
            await self._synced.add((job.id, job.attempt, job.position.rank))
        except Exception:
            stop_if_cancelled()
            log.warning("fax %s: could not record that its Communication is in line; reconciliation will", job.id,
                        exc_info=True, extra={"fax": job.id})  # fmt: skip

    async def _write_synced(self, marks: list[tuple[str, int, int]]) -> None:
        grouped: dict[tuple[int, int], list[str]] = {}
        for fax_id, attempt, rank in marks:
            grouped.setdefault((attempt, rank), []).append(fax_id)
        for (attempt, rank), ids in grouped.items():
            where = {"_id": ids[0] if len(ids) == 1 else {"$in": ids}, "attempt": attempt, "rank": rank}
            update = {"$set": {"synced": True}, "$unset": {"repair": "", "sync_at": ""}}
            await self.collection.update_many(where, update)

    async def record_rendering(self, fax_id: str, rendering: str) -> None:
        """Where the job's fax-line rendering was kept (a Z3 location), so the access gate knows it is the job's."""
        await self.collection.update_one({"_id": fax_id}, {"$set": {"rendered": rendering}})

    async def set_aside(self, fax_id: str, error: str, owner: str | None = None) -> datetime:
        """Record that handling the job failed; returns when it may be tried again.

        Each due time the job has moves to then, so no claim or reconciliation query returns it earlier.
        ``owner``: the worker holding the job's lease keeps it until then, so no other worker takes it over
        earlier.
        """
        stored = await self.collection.find_one({"_id": fax_id}, {"repair": 1, **{name: 1 for name in DUE_FIELDS}})
        previous = (stored or {}).get("repair") or {}
        count = previous.get("failures")
        failures = (count if isinstance(count, int) else 0) + 1
        moment = now()
        after = moment + repair_delay(failures)
        repair = {"failures": failures, "error": error[:1000], "at": moment, "after": after}
        later = {name: after for name in DUE_FIELDS if stored is not None and name in stored}
        update: dict[str, Any] = {"$set": {"repair": repair}}
        if later:
            update["$max"] = later
        await self.collection.update_one({"_id": fax_id}, update)
        if owner is not None:
            held = {"_id": fax_id, "state": JobState.ACTIVE.value, "lease_owner": owner}
            await self.collection.update_one(held, {"$set": {"lease_expires": after, "due_at": after}})
        return after

    # -- reconciliation ------------------------------------------------------------------------------

    async def to_check(self, moment: datetime, limit: int = 50) -> list[Job]:
        """Waiting jobs reconciliation must look at now: a kill time reached, or a submission gone quiet."""
        return await self._list({"check_at": {"$lte": moment}}, limit)

    async def unsynced(self, moment: datetime, limit: int = 50) -> list[Job]:
        """Jobs whose Communication may still lag behind them (a writer died in between)."""
        return await self._list({"sync_at": {"$lte": moment}}, limit)

    async def check_later(self, job: Job, at: datetime | None, *, polled: bool = False) -> None:
        """Reconciliation looked at ``job``: look again at ``at`` (None: never; it is with a worker or finished).

        ``polled``: the carrier was just asked, which counts as news (the next poll waits a full quiet period).
        """
        changes: dict[str, Any] = {"last_news_at": now()} if polled else {}
        update: dict[str, Any] = {"$unset": {"check_at": ""}} if at is None else {}
        if at is not None:
            changes["check_at"] = at
        if changes:
            update["$set"] = changes
        await self.collection.update_one({"_id": job.id, "state": job.state.value}, update)

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
