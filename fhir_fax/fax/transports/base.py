"""The one interface every carrier implements, what it hands over and back, and what it declares about itself.

A carrier is one package under ``fax/transports/`` (``simulator/``, ``telnyx/``) and one registration line
in ``fax/transports/__init__.py``. Its package holds everything the carrier needs: the transport (submit,
find, poll), how its webhooks are verified and read, and the capabilities it declares; nothing outside the
package knows a carrier by name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ...settings import Settings
from ..status import StatusEvent

EventSink = Callable[[StatusEvent], Awaitable[object]]

WEBHOOK_PREFIX = "/fax/webhooks"  # carrier ``name`` reports to WEBHOOK_PREFIX/name (see ``webhook_path``)


def webhook_path(name: str) -> str:
    """The path carrier ``name`` sends its webhooks to: the route and the URL given to the carrier both use this."""
    return f"{WEBHOOK_PREFIX}/{name}"


@dataclass(frozen=True)
class Capabilities:
    """What a carrier declares about itself; the worker reads these, it never probes a transport."""

    takes_tiff: bool = False  # gets the fax-line rendering (TIFF Class F) rather than the sender's document
    fetches_by_url: bool = False  # downloads the pinned document from a signed Z3 URL instead of taking bytes
    inbound: bool = False  # can receive faxes (its webhook reader reads inbound notices, or it is simulated)
    max_concurrency: int | None = None  # attempts it accepts in flight at once; None: no limit known
    rate_per_second: float | None = None  # submissions per second it accepts; None: no limit known


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
    """The carrier refused or could not take the attempt; ``code`` is a failure-reason code.

    ``maybe_taken``: the request may have reached the carrier although no answer said so (a timeout, a 5xx
    after sending). Such an attempt is never given up or resent as a new one: the worker asks the carrier
    for it (``find``) first, the way a takeover does.
    """

    def __init__(self, code: str, message: str, *, maybe_taken: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.maybe_taken = maybe_taken


class Transport(Protocol):
    """One carrier's outbound side (a class attribute or a property satisfies each of the first two)."""

    @property
    def name(self) -> str:
        """Its registered name (recorded on each job it takes)."""

    @property
    def capabilities(self) -> Capabilities:
        """What it declares; the worker reads this and never probes the transport."""

    async def start(self, sink: EventSink) -> None:
        """Begin delivering carrier news to ``sink`` (webhook carriers deliver through a route instead)."""

    async def stop(self) -> None: ...

    async def submit(self, submission: Submission) -> str:
        """Hand the attempt over; returns the carrier's fax id, raises TransportError."""

    async def find(self, reference: str, to_number: str, since: datetime) -> str | None:
        """The carrier's id for an attempt it already has (after a worker died mid-submit), else None."""

    async def poll(self, carrier_id: str) -> list[StatusEvent]:
        """Everything the carrier currently knows about one fax, as events (for reconciliation)."""


# -- webhooks --------------------------------------------------------------------------------------


class WebhookRefused(Exception):
    """The webhook is not proven to come from the carrier (unsigned, tampered, stale, not configured): 401."""


class WebhookUnreadable(ValueError):
    """The webhook is the carrier's but cannot be applied (not an event, or a deciding value is wrong): 400."""


@dataclass(frozen=True)
class VerifiedWebhook:
    """A webhook whose signature checked out: the carrier's id for the delivery (for duplicates) and its body."""

    event_id: str
    body: Any


class WebhookReader(Protocol):
    """How one carrier's webhooks are verified, then read; the generic route does the rest (duplicates, matching)."""

    def verify(self, raw: bytes, headers: Mapping[str, str]) -> VerifiedWebhook:
        """Check the signature on the raw bytes, then parse; raises WebhookRefused or WebhookUnreadable."""

    def event(self, webhook: VerifiedWebhook) -> StatusEvent | None:
        """The news it carries for us, or None (another sender's fax, an event we do not track).

        Raises WebhookUnreadable when it is about one of our attempts but cannot be matched to one.
        """


# -- inbound faxes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboundNotice:
    """A carrier's word that a fax arrived (or failed to arrive) at one of our numbers; media not fetched yet.

    ``carrier_fax_id`` is the carrier's own id for the received fax: every repeat of the news names the same
    one, so it decides "the same fax" whichever event id or order the deliveries come in.
    """

    carrier_fax_id: str
    from_number: str
    to_number: str
    occurred_at: datetime
    media_url: str | None = None  # where the carrier keeps the document; None for a failed reception
    pages: int | None = None
    partial: bool = False  # only part of the fax came through (Telnyx ``partial_content``)
    failure: Any = None  # fax.status.Failure of a failed reception


class MediaRefused(Exception):
    """The carrier's media cannot be fetched safely (a host off the allow-list, a redirect, too big, too slow).

    ``transient``: the host failed for now (5xx, a timeout); the carrier's retry of the webhook may succeed.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class InboundMedia:
    data: bytes
    content_type: str | None


class InboundReader(Protocol):
    """The inbound side of a carrier's webhook reader (declared with ``Capabilities.inbound``)."""

    def inbound(self, webhook: VerifiedWebhook) -> InboundNotice | None:
        """The received fax the webhook tells of, or None when it is about something else (an outbound fax).

        Raises WebhookUnreadable when it is an inbound event whose deciding values are wrong.
        """

    async def fetch_media(self, notice: InboundNotice) -> InboundMedia:
        """The document, fetched only from the carrier's own media hosts; raises MediaRefused."""


@dataclass(frozen=True)
class Carrier:
    """One carrier as registered: its name, its title in messages, and how to build its two sides.

    The webhook reader is built from the settings alone (a key, a tolerance), without the transport's
    credentials, so a server verifies a carrier's webhooks whichever carrier it sends through.
    """

    name: str
    title: str
    transport: Callable[[Settings, Any], Transport]
    webhooks: Callable[[Settings], WebhookReader] | None = None
