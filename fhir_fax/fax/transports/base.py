"""The interface every carrier implements, and what it hands over and back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..status import StatusEvent

EventSink = Callable[[StatusEvent], Awaitable[object]]


@dataclass(frozen=True)
class Submission:
    """One attempt of one fax, as a carrier needs it."""

    reference: str  # "{fax_id}:{attempt}"; carriers echo it back (e.g. Telnyx client_state)
    to_number: str
    from_number: str
    quality: str
    pages: int
    document: bytes
    content_type: str
    media: str  # the Z3 location (z3://bucket/key); carriers that fetch by URL get a signed one
    media_version: str | None = None  # the pinned upload: a signed URL names it, so the carrier fetches it only


class TransportError(Exception):
    """The carrier refused or could not take the attempt; ``code`` is a failure-reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Transport(Protocol):
    name: str

    async def start(self, sink: EventSink) -> None:
        """Begin delivering carrier news to ``sink`` (webhook carriers deliver through a route instead)."""

    async def stop(self) -> None: ...

    async def submit(self, submission: Submission) -> str:
        """Hand the attempt over; returns the carrier's fax id, raises TransportError."""

    async def find(self, reference: str, to_number: str, since: datetime) -> str | None:
        """The carrier's id for an attempt it already has (after a worker died mid-submit), else None."""

    async def poll(self, carrier_id: str) -> list[StatusEvent]:
        """Everything the carrier currently knows about one fax, as events (for reconciliation)."""
