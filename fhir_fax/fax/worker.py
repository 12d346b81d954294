"""The delivery worker: claims due jobs, hands them to the carrier, and reconciles what went quiet.

Runs inside ``fhir-fax serve`` (by default) or alone as ``fhir-fax worker``; any number may run
at once against one database, which is their only coordination. One worker has up to ``slots``
attempts in hand at once (``FHIR_FAX_WORKER_CONCURRENCY``, lowered to what the carrier declares),
each in its own task, and spaces its submissions by the carrier's declared rate (``pacing``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from ..db import stop_if_cancelled, wait_for_event
from ..fhir.models import now
from ..fhir.store import as_utc
from ..settings import Settings
from ..z3.locations import Z3Location, parse_z3_url
from ..z3.store import Z3Store
from . import pacing
from .documents import DocumentProblem, count_pages, run_pdfium, sniff_type
from .faults import crash_point
from .jobs import Job, JobState
from .media import pinned_document
from .outbox import Outbox, next_check
from .packet import packet_submission
from .render import render_fax, rendering_location
from .status import Failure
from .tracking import Tracker
from .transports.base import Submission, Transport, TransportError

log = logging.getLogger("fhir_fax.worker")
PAST_KILL_TIME = Failure("FAILED", "The fax was not delivered before its kill time; it will not be retried.")
RECONCILE_EVERY = 1.0  # seconds between reconciliation passes
WAKE_TICK = 0.05  # seconds: woken by sends, the worker looks for work at most this often
RENDERINGS_KEPT_BYTES = 16 * 1024 * 1024  # renderings of pinned versions kept in memory, per worker


class Worker:
    def __init__(self, settings: Settings, outbox: Outbox, tracker: Tracker, transport: Transport, z3: Z3Store) -> None:
        self.settings = settings
        self.outbox = outbox
        self.tracker = tracker
        self.transport = transport
        self.z3 = z3
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = timedelta(seconds=settings.lease_seconds)
        self.quiet = timedelta(seconds=settings.stuck_after_seconds)  # poll the carrier after this long without news
        self.slots = pacing.slots(settings.worker_concurrency, transport.capabilities)
        self.pace = pacing.Pace(transport.capabilities.rate_per_second)
        self._last_reconcile = 0.0
        self._running: set[asyncio.Task[None]] | None = None  # attempts in progress, while ``run`` runs
        self._renderings: dict[tuple[str, str], asyncio.Future[bytes]] = {}
        # Renderings of pinned versions made or read lately: the same document faxed again is not read again.
        self._rendered: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._rendered_bytes = 0
        self._drained = False  # the last claim found fewer due jobs than it had room for
        self._stepped_at = 0.0  # when ``run`` last looked for work (loop time)
        self._enqueued: asyncio.Event | None = None  # set when a send in this process commits, while ``run`` runs

    async def run(self) -> None:
        """Work until cancelled: each claimed attempt runs in its own task, up to ``slots`` at once."""
        await self.transport.start(self.tracker.apply)
        log.info("worker %s started (carrier: %s, %s at once)", self.owner, self.transport.name, self.slots)
        running = self._running = set()
        enqueued = self._enqueued = asyncio.Event()
        self.outbox.listeners.append(enqueued.set)
        try:
            while True:
                enqueued.clear()  # a job committed from here on is found by the step below or wakes the wait
                self._stepped_at = asyncio.get_running_loop().time()
                try:
                    busy = await self.step()
                except Exception:
                    stop_if_cancelled()
                    log.exception("worker step failed; continuing")
                    busy = False
                if not busy or self._drained:  # the queue had no more due jobs than this step took
                    await self._wait(running)
        finally:
            self.outbox.listeners.remove(enqueued.set)
            self._running = self._enqueued = None
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await self.transport.stop()

    async def _wait(self, running: set[asyncio.Task[None]]) -> None:
        """Until the next look for work: with every slot taken, until an attempt ends; else until a send of this
        process commits a job, or the poll interval (jobs of other processes, retries, lapsed leases)."""
        if len(running) >= self.slots:
            await asyncio.wait(running, timeout=RECONCILE_EVERY, return_when=asyncio.FIRST_COMPLETED)
        elif self._enqueued is not None:
            await wait_for_event(self._enqueued, self.settings.worker_poll_seconds)
            loop = asyncio.get_running_loop()
            rest = self._stepped_at + WAKE_TICK - loop.time()
            if rest > 0:  # under a stream of sends, the jobs of several commits are claimed by one read
                await asyncio.sleep(rest)
        else:
            await asyncio.sleep(self.settings.worker_poll_seconds)

    async def step(self) -> bool:
        """Reconcile when it is due, then take as many due jobs as there are free slots (True when any was taken).

        Under ``run`` the attempts continue in their own tasks and this returns at once; called alone (tests,
        ``fhir-fax send``) it returns when they are done. Reconciliation is due once a second whether or not
        jobs are waiting: under a steady backlog it would otherwise never run, and kill time, polls of quiet
        faxes and repairs would wait for a lull.
        """
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_reconcile >= RECONCILE_EVERY:
            self._last_reconcile = loop.time()
            await self.reconcile()
        running = self._running
        free = self.slots - (len(running) if running is not None else 0)
        if free <= 0:
            return False
        claimed = await self.outbox.claim(self.owner, self.lease, free)
        self._drained = claimed.read < free
        attempts = [
            self.isolated(
                job, "the attempt could not be made", partial(self.attempt, job, job.id in claimed.takeovers), hold=True
            )
            for job in claimed.jobs
        ]
        if running is None:
            await asyncio.gather(*attempts)
        else:
            for attempt in attempts:
                task = asyncio.create_task(attempt)
                running.add(task)
                task.add_done_callback(running.discard)
        return bool(claimed)  # a record that is not a job was taken too: the outbox set it aside

    async def attempt(self, job: Job, takeover: bool = True) -> None:
        """Prepare and hand over one attempt; a takeover first asks the carrier whether it has it.

        ``takeover`` False: the attempt was queued, so it was never handed over (a retry is a new attempt, and an
        attempt the carrier may have taken stays with a worker until taken over); the carrier is not asked.
        """
        attempt, reference = job.attempt, job.reference
        holder = job.lease_owner or self.owner  # this claim's own lease: a takeover, even by this worker, ends it
        fields = {"fax": job.id, "attempt": attempt, "worker": holder}
        log.info("fax %s attempt %s claimed by %s", job.id, attempt, holder, extra=fields)
        if as_utc(job.kill_at) <= now():  # claimed late (workers were down): it is stopped, never sent
            await self.tracker.fail(job.id, attempt, PAST_KILL_TIME, now(), final=True, holder=holder)
            return
        shown = await self.tracker.sync(job, mark=False)  # PROCESSING; recorded with the hand-over
        crash_point("after-claim")
        already = await self.transport.find(reference, job.to_number, job.created) if takeover else None
        if already is not None:
            log.info("fax %s attempt %s: the carrier already has it as %s", job.id, attempt, already, extra=fields)
            await self.outbox.record_submission(job, holder, self.transport.name, already, self.quiet, shown=shown)
            return
        try:
            submission = await self.prepare(job, reference)
        except DocumentProblem as problem:
            failure = Failure("FAILED", str(problem))
            await self.tracker.fail(job.id, attempt, failure, now(), final=True, holder=holder)
            return
        await self.pace.wait()  # the carrier's declared rate; before the renewal, so waiting never costs the lease
        if self.lease_short(job) and not await self.outbox.renew(job, holder, self.lease):
            log.info("fax %s attempt %s: taken over while preparing", job.id, attempt, extra=fields)
            return
        try:
            carrier_id = await self.transport.submit(submission)
        except TransportError as error:
            if error.maybe_taken:  # no answer is not a refusal: the takeover asks the carrier before any resend
                await self.tracker.set_aside(job, "the carrier gave no answer to the hand-over", error, holder)
                return
            await self.tracker.fail(job.id, attempt, Failure(error.code, error.message), now(), holder=holder)
            return
        crash_point("after-submit")
        recorded = await self.outbox.record_submission(
            job, holder, self.transport.name, carrier_id, self.quiet, shown=shown
        )
        if not recorded:
            log.info("fax %s attempt %s: the job moved on while submitting", job.id, attempt, extra=fields)
        crash_point("after-record")

    def lease_short(self, job: Job) -> bool:
        """Whether the claim's lease must be renewed before the hand-over: less than half of it is left.

        With more left, nobody can have taken the job over (a takeover needs the lease to have run out; the
        half is the margin for clocks of other hosts), and the hand-over write checks this claim's lease
        token anyway; so a quick preparation costs no renewal write.
        """
        expires = job.lease_expires
        return expires is None or as_utc(expires) - now() < self.lease / 2

    async def prepare(self, job: Job, reference: str) -> Submission:
        """The attempt as the carrier gets it, made from the version the send pinned and nothing else."""
        if job.documents is not None or job.cover is not None:  # a cover and/or several documents
            return await packet_submission(self.z3, self.outbox, job, reference, self.transport.capabilities.takes_tiff)
        location = parse_z3_url(job.media, ())
        kept = self._kept_rendering(job) if self.transport.capabilities.takes_tiff else None
        if kept is not None and job.media_pages:  # made from this very version's checked bytes: no need to read them
            return self._submission(job, reference, job.media_pages, kept, "image/tiff")
        document = await pinned_document(self.z3, job)  # DocumentProblem: gone or changed -> STOPPED
        pages = job.media_pages if job.media_pages else await run_pdfium(count_pages, document)
        content_type = sniff_type(document) or "application/octet-stream"
        if self.transport.capabilities.takes_tiff:
            document = await self.rendered(job, location, document)
            content_type = "image/tiff"
        return self._submission(job, reference, pages, document, content_type)

    @staticmethod
    def _submission(job: Job, reference: str, pages: int, document: bytes, content_type: str) -> Submission:
        return Submission(
            reference=reference,
            to_number=job.to_number,
            from_number=job.from_number,
            quality=job.quality,
            pages=pages,
            document=document,
            content_type=content_type,
            media=job.media,
            media_version=None if job.media_version is None else str(job.media_version),
        )

    def _kept_rendering(self, job: Job) -> bytes | None:
        """The rendering this worker made of the job's pinned version and keeps in memory, if any."""
        if job.media_version is None:
            return None
        key = (str(job.media_version), job.quality)
        kept = self._rendered.get(key)
        if kept is not None:
            self._rendered.move_to_end(key)
        return kept

    async def rendered(self, job: Job, location: Z3Location, document: bytes) -> bytes:
        """The fax-line rendering (TIFF Class F) of the pinned version, made once and kept in Z3 beside the original.

        Found again by the version it renders (never by its name, which any uploader could write to). Attempts
        of this worker that need the same rendering at once wait for the one that makes it.
        """
        key = (str(job.media_version if job.media_version is not None else job.media), job.quality)
        if (kept := self._kept_rendering(job)) is not None:
            return kept
        pending = self._renderings.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        made: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._renderings[key] = made
        try:
            tiff = await self._render(job, location, document)
        except asyncio.CancelledError:
            made.cancel()
            raise
        except Exception as error:
            made.set_exception(error)
            made.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._renderings[key]
        made.set_result(tiff)
        if job.media_version is not None:  # a version never changes, so neither does its rendering
            self._keep_rendering(key, tiff)
        return tiff

    def _keep_rendering(self, key: tuple[str, str], tiff: bytes) -> None:
        """Keep a version's rendering in memory (least recently used first out, ``RENDERINGS_KEPT_BYTES`` in all)."""
        if len(tiff) > RENDERINGS_KEPT_BYTES // 4:
            return
        self._rendered[key] = tiff
        self._rendered_bytes += len(tiff)
        while self._rendered_bytes > RENDERINGS_KEPT_BYTES:
            _, dropped = self._rendered.popitem(last=False)
            self._rendered_bytes -= len(dropped)

    async def _render(self, job: Job, location: Z3Location, document: bytes) -> bytes:
        target = rendering_location(location, job.quality)
        source = job.media_version
        if source is not None:
            existing = await self.z3.read_rendering(source, job.quality)
        else:
            existing = await self.z3.read(target) if job.rendered else None
        if existing is not None:
            return existing
        try:
            tiff = await run_pdfium(render_fax, document, job.quality)
        except Exception as error:  # PDFium/Pillow failures on a document that passed the send-time checks
            raise DocumentProblem(f"Document generation error: the document could not be rendered ({error}).") from None
        await self.z3.put_rendering(target, source, job.quality, tiff)
        await self.outbox.record_rendering(job.id, str(target))
        return tiff

    async def isolated(self, job: Job, what: str, work: Callable[[], Awaitable[object]], *, hold: bool = False) -> None:
        """Run ``work`` for one job; a failure is logged and the job set aside with back-off, never raised.

        ``hold``: this worker holds the job's lease and keeps it until the back-off ends.
        """
        try:
            await work()
        except Exception as error:
            stop_if_cancelled()
            await self.tracker.set_aside(job, what, error, (job.lease_owner or self.owner) if hold else None)

    async def reconcile(self) -> None:
        """Stop faxes at their kill time, poll the carrier for quiet ones, finish interrupted Communication updates.

        Only what is due is read (``Outbox.to_check``, ``Outbox.unsynced``: one indexed range each), so the
        cost does not grow with the faxes ever sent. Each job is handled on its own (``isolated``): one that
        fails is set aside with back-off and the pass goes on, so kill time and repairs keep working for every
        other fax. Kill time comes before repairs so that a job whose Communication cannot be repaired is
        still stopped on time.
        """
        moment = now()
        for job in await self.outbox.to_check(moment):
            await self.isolated(job, "it could not be checked (kill time, poll)", partial(self.check, job, moment))
        for job in await self.outbox.unsynced(moment):
            await self.isolated(job, "its Communication could not be updated", partial(self.tracker.sync, job))

    async def check(self, job: Job, moment: datetime) -> None:
        """A waiting job is due for a look: stop it at its kill time, else poll it if it went quiet."""
        kill_at = as_utc(job.kill_at)
        waiting = job.state in (JobState.QUEUED, JobState.SUBMITTED)
        if waiting and kill_at <= moment:
            if not await self.tracker.fail(job.id, job.attempt, PAST_KILL_TIME, moment, final=True):
                await self.outbox.check_later(job, None)  # it moved on meanwhile: its new state has its own times
            return
        if job.state is JobState.SUBMITTED:
            quiet_until = as_utc(job.last_news_at or moment) + self.quiet
            if quiet_until > moment:  # news came since this look was planned: look again once it goes quiet
                await self.outbox.check_later(job, min(quiet_until, kill_at))
            else:
                await self.poll_one(job)
        elif job.state is JobState.QUEUED:
            await self.outbox.check_later(job, kill_at)
        else:  # with a worker, or finished: nothing for reconciliation until it is waiting again
            await self.outbox.check_later(job, None)

    async def poll_one(self, job: Job) -> None:
        """Ask the carrier about the job's current attempt; only news about that very attempt is applied."""
        carrier_id = job.carrier_id()
        if carrier_id:
            for event in await self.transport.poll(carrier_id):
                if event.reference == job.reference:
                    await self.tracker.apply(event)
                else:
                    log.warning(
                        "fax %s attempt %s: the carrier's fax %s reports %r; ignored",
                        job.id, job.attempt, carrier_id, event.reference, extra={"fax": job.id},
                    )  # fmt: skip
        await self.outbox.check_later(job, next_check(now(), self.quiet, job.kill_at), polled=True)


def create_worker(settings: Settings, database: Any) -> Worker:
    """A worker on ``database`` with the configured carrier, from the one runtime (``fhir_fax.runtime``)."""
    from ..runtime import Runtime  # the runtime builds workers; imported here as it imports this module

    return Runtime.build(settings, database).worker()
