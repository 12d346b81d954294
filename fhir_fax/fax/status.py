"""News about a fax (``StatusEvent``, ``Failure``), and how a job's state shows on its Communication.

A status is ordered by ``(attempt, rank)`` (``jobs.Position``): QUEUED 0 < PROCESSING 1 < SENDING 2 <
DELIVERED or STOPPED 3 (final). A transient failure of attempt n moves the fax to (n + 1, QUEUED), which is
still forward, so a retry never counts as going backwards and a late event from an earlier
attempt (or a duplicate) never changes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..fhir.models import format_instant
from .jobs import Job, OutboundStatus, Position, Reported
from .terminology import (
    FAILURE_REASON_SYSTEM,
    OUTBOUND_STATUS_EXTENSION,
    PAGES_EXTENSION,
    outbound_status_extension,
)

ATTEMPT_EXTENSION = "urn:fhir-fax:extension:fax-attempt"

# Failure codes and the messages a person reads in statusReason.text.
FAILURE_MESSAGES = {
    "BUSY": "The line was busy.",
    "NO_ANSWER": "The receiving fax machine did not answer.",
    "FAILED": "The fax could not be sent.",
    "UNKNOWN": "The carrier reported a failure without a reason.",
    "486": "The receiving line is busy here (SIP 486).",
}


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed: a code of the failure-reason system and a message for people."""

    code: str
    message: str
    retry: bool | None = None  # the carrier's own verdict; None: the retry policy decides by the code (retry.py)


@dataclass(frozen=True)
class StatusEvent:
    """News about one attempt of one fax, from the worker, the carrier's webhook or a poll."""

    reference: str  # "{fax_id}:{attempt}", what the carrier knows our attempt by
    status: Reported  # PROCESSING | SENDING | DELIVERED | FAILED (a plain string is accepted and checked)
    occurred_at: datetime
    pages: int | None = None
    failure: Failure | None = None
    source: str = "carrier"
    carrier_id: str | None = None  # the carrier's id for the fax it reports on, when it says (webhooks do)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Reported(self.status))

    @property
    def fax_id(self) -> str:
        return self.reference.rsplit(":", 1)[0]

    @property
    def attempt(self) -> int:
        return int(self.reference.rsplit(":", 1)[1])


def shown_position(communication: dict[str, Any]) -> Position:
    """The position a Communication currently shows."""
    attempt, status = 1, OutboundStatus.QUEUED
    for extension in communication.get("extension", []):
        if extension["url"] == ATTEMPT_EXTENSION:
            attempt = extension.get("valueInteger", 1)
        elif extension["url"] == OUTBOUND_STATUS_EXTENSION:
            code = extension["valueCodeableConcept"]["coding"][0]["code"]
            status = OutboundStatus(code) if code in OutboundStatus.__members__ else OutboundStatus.QUEUED
    return Position.of(attempt, status)


def show_job(communication: dict[str, Any], job: Job) -> dict[str, Any] | None:
    """The Communication as it should read for ``job``; None when it already does or is further on.

    Forward-only: a Communication never moves to an earlier (attempt, rank), so a slow writer
    holding an old job snapshot can never undo a newer status.
    """
    target = job.position
    current = shown_position(communication)
    if target < current or (target == current and current.final):
        return None
    updated = dict(communication)
    extensions = [
        e
        for e in communication.get("extension", [])
        if e["url"] not in (OUTBOUND_STATUS_EXTENSION, ATTEMPT_EXTENSION, PAGES_EXTENSION)
    ]
    extensions.append(outbound_status_extension(job.status.value))
    extensions.append({"url": ATTEMPT_EXTENSION, "valueInteger": job.attempt})
    if job.pages:
        extensions.append({"url": PAGES_EXTENSION, "valueInteger": job.pages})
    updated["extension"] = extensions
    notes = [_attempt_note(f) for f in job.failures]
    if notes:
        updated["note"] = notes
    if job.status is OutboundStatus.DELIVERED:
        updated["status"] = "completed"
        if job.finished_at is not None:
            updated["received"] = format_instant(job.finished_at)
    elif job.status is OutboundStatus.STOPPED:
        failure = job.failures[-1]
        updated["status"] = "stopped"
        updated["statusReason"] = {
            "coding": [{"system": FAILURE_REASON_SYSTEM, "code": failure["code"]}],
            "text": failure["message"],
        }
    else:
        updated["status"] = "in-progress"
    if updated == communication:
        return None
    return updated


def _attempt_note(failure: Mapping[str, Any]) -> dict[str, Any]:
    text = f"Attempt {failure['attempt']} failed ({failure['code']}): {failure['message']}"
    if failure.get("retry_at"):
        text += f" Next attempt at {format_instant(failure['retry_at'])}."
    return {"time": format_instant(failure["at"]), "text": text}
