"""``apply``: the one way a status change happens, whether it came from the worker, a webhook or a poll.

Each change is first a compare-and-set on the job (so it happens once and only forward), then
the Communication is brought in line (a new version per step). If the process dies in between,
the job stays marked unsynced and reconciliation finishes the Communication later.

Bringing the Communication in line never raises: when it fails (a stored Communication that no
longer validates, a database error), the job stays unsynced and is set aside with back-off
(``Outbox.set_aside``), so the worker, the webhook and the reconciliation pass that asked carry
on with their own work and with every other fax.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from ..db import stop_if_cancelled
from ..fhir.errors import FHIRError, ResourceNotFound
from ..fhir.models import now
from ..fhir.store import ResourceStore
from ..settings import Settings
from .jobs import Job, JobState, OutboundStatus, Reported
from .outbox import Outbox
from .retry import RetryPolicy
from .status import Failure, StatusEvent, show_job

log = logging.getLogger("fhir_fax.tracking")


class Tracker:
    def __init__(
        self,
        settings: Settings,
        store: ResourceStore,
        outbox: Outbox,
        auditor: Any = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.auditor = auditor  # fhir_fax.audit.Auditor
        self.retry = retry or RetryPolicy.of(settings)  # the one retry policy (``FHIR_FAX_RETRY_*``)

    async def apply(self, event: StatusEvent) -> bool:
        """Apply carrier (or worker) news; False when it was stale, duplicated or for an unknown fax."""
        fax_id, attempt = event.fax_id, event.attempt
        if event.status is Reported.FAILED:
            return await self.fail(fax_id, attempt, event.failure or Failure("UNKNOWN", ""), event.occurred_at)
        extra: dict[str, Any] = {}
        if event.status is Reported.DELIVERED:
            extra = {"state": JobState.DONE.value, "finished_at": event.occurred_at}
            if isinstance(event.pages, int) and not isinstance(event.pages, bool) and event.pages > 0:
                extra["pages"] = event.pages  # carriers check their values; this keeps a Communication valid anyway
        job = await self.outbox.advance(fax_id, attempt, OutboundStatus(event.status.value), extra)
        if job is None:
            log.info(
                "ignored %s for fax %s attempt %s (%s): not forward",
                event.status, fax_id, attempt, event.source,
                extra={"fax": fax_id, "attempt": attempt, "status": event.status, "source": event.source},
            )  # fmt: skip
            return False
        log.info(
            "fax %s attempt %s is %s (%s)",
            fax_id, attempt, event.status, event.source,
            extra={"fax": fax_id, "attempt": attempt, "status": event.status, "source": event.source},
        )  # fmt: skip
        await self.sync(job)
        return True

    async def fail(
        self,
        fax_id: str,
        attempt: int,
        failure: Failure,
        at: datetime,
        *,
        final: bool = False,
        holder: str | None = None,
    ) -> bool:
        """Attempt ``attempt`` failed: retry it later if the failure is transient and time allows, else stop.

        ``holder``: a worker reporting its own failure; it counts only while that worker still holds the job
        (one that lost its lease meanwhile must not stop the attempt another worker has taken over).
        """
        job = await self.outbox.get(fax_id)
        if job is None:
            return False
        retry_at = None if final else self.retry.retry_at(attempt, failure, now(), job.kill_at)
        message = failure.message or "The carrier reported a failure without a reason."
        record = {"attempt": attempt, "code": failure.code, "message": message, "at": at, "retry_at": retry_at}
        updated = await self.outbox.fail_attempt(fax_id, attempt, record, retry_at, holder=holder, kill_at=job.kill_at)
        if updated is None:
            return False
        fields = {"fax": fax_id, "attempt": attempt, "code": failure.code}
        if retry_at:
            log.info(
                "fax %s attempt %s failed (%s); retry at %s", fax_id, attempt, failure.code, retry_at, extra=fields
            )
        else:
            log.info("fax %s stopped after attempt %s: %s %s", fax_id, attempt, failure.code, message, extra=fields)
        await self.sync(updated)
        return True

    async def sync(self, job: Job, *, mark: bool = True) -> bool:
        """Make the Communication show ``job``'s status (no-op if it already does or is further on).

        On failure the job stays unsynced and is set aside with back-off; nothing is raised. True when the
        Communication shows it; ``mark`` False leaves recording that on the job to the caller's next write of
        it (the worker's hand-over), which saves a write.
        """
        try:
            updated = await self.store.modify("Communication", job.communication_id, lambda c: show_job(c, job))
            if updated is not None and self.auditor is not None:
                await self.auditor.fax_status(updated, job.status.value)
        except ResourceNotFound:
            log.warning("fax %s: its Communication %s is gone", job.id, job.communication_id)
        except Exception as error:
            stop_if_cancelled()
            await self.set_aside(job, "its Communication could not be updated", error)
            return False
        if mark:
            await self.outbox.mark_synced(job)
        return True

    async def set_aside(self, job: Job, what: str, error: BaseException, owner: str | None = None) -> None:
        """Log why ``job`` could not be handled and leave it for later (growing back-off), never for good."""
        detail = error.diagnostics if isinstance(error, FHIRError) else f"{type(error).__name__}: {error}"
        after = await self.outbox.set_aside(job.id, detail, owner)
        communication = job.communication_id
        log.warning(
            "fax %s (Communication/%s): %s: %s; retry after %s",
            job.id, communication, what, detail, after.isoformat(),
            extra={"fax": job.id, "communication": communication, "retry_at": after.isoformat()},
            exc_info=not isinstance(error, FHIRError),
        )  # fmt: skip
