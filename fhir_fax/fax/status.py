"""The outbound fax status model, and how a job's state shows on its Communication.

A status is ordered by ``(attempt, rank)``: QUEUED 0 < PROCESSING 1 < SENDING 2 < DELIVERED or
STOPPED 3 (final). A transient failure of attempt n moves the fax to (n + 1, QUEUED), which is
still forward, so a retry never counts as going backwards and a late event from an earlier
attempt (or a duplicate) never changes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..fhir.models import format_instant
from .terminology import (
    FAILURE_REASON_SYSTEM,
    OUTBOUND_STATUS_EXTENSION,
    PAGES_EXTENSION,
    outbound_status_extension,
)

RANK = {"QUEUED": 0, "PROCESSING": 1, "SENDING": 2, "DELIVERED": 3, "STOPPED": 3}
ATTEMPT_EXTENSION = "urn:fhir-fax:extension:fax-attempt"

# Failure codes and the messages a person reads in statusReason.text.
FAILURE_MESSAGES = {
    "BUSY": "The line was busy.",
    "NO_ANSWER": "The receiving fax machine did not answer.",
    "FAILED": "The fax could not be sent.",
    "UNKNOWN": "The carrier reported a failure without a reason.",
    "486": "The receiving line is busy here (SIP 486).",
}
TRANSIENT_CODES = frozenset({"BUSY", "NO_ANSWER", "486", "CARRIER_UNAVAILABLE"})


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed: a code of the failure-reason system and a message for people."""

    code: str
    message: str
    retry: bool | None = None  # None: decided by the code (busy, no answer, 486, carrier trouble)

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES if self.retry is None else self.retry


@dataclass(frozen=True)
class StatusEvent:
    """News about one attempt of one fax, from the worker, the carrier's webhook or a poll."""

    reference: str  # "{fax_id}:{attempt}", what the carrier knows our attempt by
    status: str  # PROCESSING | SENDING | DELIVERED | FAILED
    occurred_at: datetime
    pages: int | None = None
    failure: Failure | None = None
    source: str = "carrier"
    carrier_id: str | None = None  # the carrier's id for the fax it reports on, when it says (webhooks do)

    @property
    def fax_id(self) -> str:
        return self.reference.rsplit(":", 1)[0]

    @property
    def attempt(self) -> int:
        return int(self.reference.rsplit(":", 1)[1])


def reference_for(fax_id: str, attempt: int) -> str:
    return f"{fax_id}:{attempt}"


def position(communication: dict[str, Any]) -> tuple[int, int]:
    """The (attempt, rank) a Communication currently shows."""
    attempt, rank = 1, 0
    for extension in communication.get("extension", []):
        if extension["url"] == ATTEMPT_EXTENSION:
            attempt = extension.get("valueInteger", 1)
        elif extension["url"] == OUTBOUND_STATUS_EXTENSION:
            rank = RANK.get(extension["valueCodeableConcept"]["coding"][0]["code"], 0)
    return attempt, rank


def show_job(communication: dict[str, Any], job: dict[str, Any]) -> dict[str, Any] | None:
    """The Communication as it should read for ``job``; None when it already does or is further on.

    Forward-only: a Communication never moves to an earlier (attempt, rank), so a slow writer
    holding an old job snapshot can never undo a newer status.
    """
    target = (job["attempt"], RANK[job["status"]])
    current = position(communication)
    if target < current or (target == current and current[1] == 3):
        return None
    updated = dict(communication)
    extensions = [
        e
        for e in communication.get("extension", [])
        if e["url"] not in (OUTBOUND_STATUS_EXTENSION, ATTEMPT_EXTENSION, PAGES_EXTENSION)
    ]
    extensions.append(outbound_status_extension(job["status"]))
    extensions.append({"url": ATTEMPT_EXTENSION, "valueInteger": job["attempt"]})
    if job.get("pages"):
        extensions.append({"url": PAGES_EXTENSION, "valueInteger": job["pages"]})
    updated["extension"] = extensions
    notes = [_attempt_note(f) for f in job.get("failures", [])]
    if notes:
        updated["note"] = notes
    if job["status"] == "DELIVERED":
        updated["status"] = "completed"
        updated["received"] = format_instant(job["finished_at"])
    elif job["status"] == "STOPPED":
        failure = job["failures"][-1]
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


def _attempt_note(failure: dict[str, Any]) -> dict[str, Any]:
    text = f"Attempt {failure['attempt']} failed ({failure['code']}): {failure['message']}"
    if failure.get("retry_at"):
        text += f" Next attempt at {format_instant(failure['retry_at'])}."
    return {"time": format_instant(failure["at"]), "text": text}
