"""The delivery state machine's vocabulary: job states, outbound statuses, a job's position, and the job read model.

Everything here is str-valued or built from the stored document, so the documents in ``fax_jobs`` and the
Communications read exactly as before; code that reads a job reads a ``Job``, never the raw document.
``Job.of`` is the one place a stored document becomes a job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple


class JobState(StrEnum):
    """Whose turn a job is: any worker's (queued), one worker's (active), the carrier's (submitted), nobody's (done)."""

    QUEUED = "queued"
    ACTIVE = "active"
    SUBMITTED = "submitted"
    DONE = "done"


class OutboundStatus(StrEnum):
    """What a Communication shows of its fax, ordered by ``rank`` within one attempt."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    SENDING = "SENDING"
    DELIVERED = "DELIVERED"
    STOPPED = "STOPPED"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    @property
    def final(self) -> bool:
        return self.rank == FINAL_RANK


FINAL_RANK = 3
_RANKS = {
    OutboundStatus.QUEUED: 0,
    OutboundStatus.PROCESSING: 1,
    OutboundStatus.SENDING: 2,
    OutboundStatus.DELIVERED: FINAL_RANK,
    OutboundStatus.STOPPED: FINAL_RANK,
}


class Reported(StrEnum):
    """What news about an attempt may say (a carrier reports FAILED; the job then retries or stops)."""

    PROCESSING = "PROCESSING"
    SENDING = "SENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


class Position(NamedTuple):
    """Where a fax is: ``(attempt, rank)``, compared as a tuple; the one definition of "forward".

    A transient failure of attempt n moves the fax to (n + 1, QUEUED), which is still forward, so a retry
    never counts as going backwards and late news about an earlier attempt never changes anything.
    """

    attempt: int
    rank: int

    @classmethod
    def of(cls, attempt: int, status: OutboundStatus) -> Position:
        return cls(attempt, status.rank)

    @property
    def key(self) -> int:
        """The position as one number (stored as ``position``), so "is this forward?" is one flat range condition."""
        return self.attempt * 10 + self.rank

    @property
    def final(self) -> bool:
        return self.rank == FINAL_RANK


def reference_for(fax_id: str, attempt: int) -> str:
    """What a carrier knows one attempt by (Telnyx echoes it in ``client_state``)."""
    return f"{fax_id}:{attempt}"


class UnreadableJob(ValueError):
    """A stored job record that is not a job (a field missing or of the wrong kind): it is set aside, not handled."""

    def __init__(self, fax_id: str, communication_id: str | None, problem: str) -> None:
        super().__init__(f"The job record cannot be read: {problem}.")
        self.fax_id = fax_id
        self.communication_id = communication_id


@dataclass(frozen=True)
class Repair:
    """A job set aside after its handling failed: how often in a row, why, and when it may be tried again."""

    failures: int
    error: str
    at: datetime | None
    after: datetime | None


@dataclass(frozen=True)
class Job:
    """One outbound fax as stored in ``fax_jobs``, read-only; every change goes through ``Outbox``."""

    id: str
    communication_id: str
    media: str
    quality: str
    from_number: str
    to_number: str
    created: datetime
    kill_at: datetime
    state: JobState
    attempt: int
    status: OutboundStatus
    failures: tuple[Mapping[str, Any], ...] = ()
    carrier: str | None = None
    carrier_ids: Mapping[str, str] = field(default_factory=dict)
    media_version: Any = None  # the pinned upload (Z3 version id); None for jobs queued before versions were pinned
    media_sha1: str | None = None
    media_size: int | None = None
    media_pages: int | None = None
    rendered: str | None = None
    pages: int | None = None
    finished_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires: datetime | None = None
    synced: bool = True
    repair: Repair | None = None
    # A packet (cover sheet and/or several documents): each document as pinned at send, in the order faxed
    # (``{media, version, sha1, size, pages}``), and what the cover says (``cover.CoverSheet``). None for a
    # single bare document, whose ``media*`` fields above say it all (and for jobs queued before packets).
    documents: tuple[Mapping[str, Any], ...] | None = None
    cover: Mapping[str, Any] | None = None
    resend_of: str | None = None  # the Communication this fax sends again
    last_news_at: datetime | None = None  # the last news of the attempt (or the last poll), for reconciliation

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> Job:
        """The job a stored document describes (the only place the document's field names are read).

        Raises UnreadableJob, naming the field, when the record is damaged.
        """
        try:
            return cls._read(document)
        except KeyError as missing:
            problem = f"{missing.args[0]} is missing"
        except (TypeError, ValueError) as error:
            problem = str(error)
        communication = document.get("communication_id")
        communication = communication if isinstance(communication, str) else None
        raise UnreadableJob(str(document.get("_id")), communication, problem)

    @classmethod
    def _read(cls, document: Mapping[str, Any]) -> Job:
        repair = document.get("repair") or None
        return cls(
            id=document["_id"],
            communication_id=document["communication_id"],
            media=document["media"],
            quality=document["quality"],
            from_number=document["from_number"],
            to_number=document["to_number"],
            created=document["created"],
            kill_at=document["kill_at"],
            state=JobState(document["state"]),
            attempt=document["attempt"],
            status=OutboundStatus(document["status"]),
            failures=tuple(document.get("failures") or ()),
            carrier=document.get("carrier"),
            carrier_ids=dict(document.get("carrier_ids") or {}),
            media_version=document.get("media_version"),
            media_sha1=document.get("media_sha1"),
            media_size=document.get("media_size"),
            media_pages=document.get("media_pages"),
            rendered=document.get("rendered"),
            pages=document.get("pages"),
            finished_at=document.get("finished_at"),
            lease_owner=document.get("lease_owner"),
            lease_expires=document.get("lease_expires"),
            synced=bool(document.get("synced", True)),
            repair=None if repair is None else _repair(repair),
            documents=None if document.get("documents") is None else tuple(document["documents"]),
            cover=document.get("cover"),
            resend_of=document.get("resend_of"),
            last_news_at=document.get("last_news_at"),
        )

    @property
    def position(self) -> Position:
        return Position.of(self.attempt, self.status)

    @property
    def reference(self) -> str:
        """The current attempt's reference."""
        return reference_for(self.id, self.attempt)

    def carrier_id(self, attempt: int | None = None) -> str | None:
        """The carrier's id for ``attempt`` (default: the current one), recorded when it took the attempt."""
        return self.carrier_ids.get(str(self.attempt if attempt is None else attempt))


def _repair(stored: Mapping[str, Any]) -> Repair:
    failures = stored.get("failures")
    return Repair(
        failures=failures if isinstance(failures, int) and not isinstance(failures, bool) else 0,
        error=str(stored.get("error") or ""),
        at=stored.get("at"),
        after=stored.get("after"),
    )
