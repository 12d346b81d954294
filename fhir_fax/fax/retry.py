"""The retry policy: which failed attempts are tried again, and when (HylaFAX-style).

One object, built from ``Settings`` (``FHIR_FAX_RETRY_*``): only transient failures are retried, at most
``max_attempts`` attempts per fax, each wait ``backoff`` times the one before, and never past the fax's kill
time. Carriers name failures with codes; the codes worth retrying are listed here once. A carrier may know
more than its code says (Telnyx: "the call dropped" is FAILED yet worth retrying) and then says so on the
``Failure`` itself (``retry``), which the policy honours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ..settings import Settings
from .status import Failure

# busy, no answer, SIP 480 (temporarily unavailable), 486 (busy here), 503 (service unavailable), carrier trouble
RETRYABLE_CODES = frozenset({"BUSY", "NO_ANSWER", "480", "486", "503", "CARRIER_UNAVAILABLE"})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    first_delay: timedelta = timedelta(seconds=180)
    backoff: float = 2.0
    retryable_codes: frozenset[str] = RETRYABLE_CODES

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.retry_max_attempts,
            first_delay=timedelta(seconds=settings.retry_delay_seconds),
            backoff=settings.retry_backoff,
        )

    def retryable(self, failure: Failure) -> bool:
        """The carrier's own verdict when it gave one, else whether the code is a transient one."""
        return failure.code in self.retryable_codes if failure.retry is None else failure.retry

    def delay(self, attempt: int) -> timedelta:
        """The wait after attempt ``attempt`` failed: ``first_delay``, then ``backoff`` times longer each time."""
        return self.first_delay * self.backoff ** (attempt - 1)

    def retry_at(self, attempt: int, failure: Failure, moment: datetime, kill_at: datetime) -> datetime | None:
        """When attempt ``attempt + 1`` runs, or None when the fax stops here."""
        if not self.retryable(failure) or attempt >= self.max_attempts:
            return None
        at = moment + self.delay(attempt)
        kill_at = kill_at if kill_at.tzinfo else kill_at.replace(tzinfo=at.tzinfo)
        return None if at > kill_at else at
