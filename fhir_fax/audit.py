"""The audit trail: an AuditEvent for every fax sent, status change, read of a Communication or a document
(FHIR reads and searches, previews, signed downloads) and refused access.

Stored like any resource and searchable by ``entity`` and ``patient``, so a practice can produce an
accounting of disclosures (``AuditEvent?patient=Patient/123``). Writing an event never fails the request
it describes: a failure to record is logged loudly instead.

Events are written with group commit: a request waits until its event is stored (so an answered read
is always on record), but events of concurrent requests that arrive while a write is in flight go
together in the next ``insert_many``. One request alone is written at once; under load, dozens share one
round trip. The event of a sent fax is written in the send's own transaction instead (``fax_sent_event``).

Refusals of unauthenticated requests (no token, a bad token, a wrong client secret) are not written one by
one: anyone can send them, as fast as they like, and each would cost a durable write. They are counted in
memory instead, per (address, action, resource, reason), and written as one AuditEvent per count and
minute, with how many there were and when the first and last came (``RefusalAggregator``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .db import GroupWrites, wait_for_event
from .fhir.models import format_instant, now
from .fhir.store import ResourceStore

log = logging.getLogger("fhir_fax.audit")

EVENT_TYPES = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTIONS = "http://hl7.org/fhir/restful-interaction"
FAX_EVENTS = "urn:fhir-fax:audit-event"
CLIENTS = "urn:fhir-fax:client"
DOCUMENTS = "urn:fhir-fax:z3"
RESTFUL = {"read", "vread", "history-instance", "search-type"}
STATUS_LINGER = 0.02  # seconds fax status events coming together wait for each other (``GroupWrites.linger``)
SUCCESS, MINOR_FAILURE = "0", "4"
ANONYMOUS = "anonymous"  # the caller of a request that did not authenticate
REFUSAL_COUNT = "urn:fhir-fax:refusal-count"  # extension: how many refusals an aggregated event stands for


def audit_event(
    *,
    subtype: tuple[str, str],
    action: str,
    outcome: str,
    who: str,
    address: str | None,
    entities: list[str],
    description: str,
    documents: list[str] | None = None,
) -> dict[str, Any]:
    system, code = subtype
    agent: dict[str, Any] = {
        "who": {"identifier": {"system": CLIENTS, "value": who}, "display": who},
        "requestor": True,
    }
    if address:
        agent["network"] = {"address": address, "type": "2"}
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": EVENT_TYPES, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": system, "code": code}],
        "action": action,
        "recorded": format_instant(now()),
        "outcome": outcome,
        "outcomeDesc": description,
        "agent": [agent],
        "source": {"observer": {"display": "fhir-fax"}},
    }
    described: list[dict[str, Any]] = [
        {"what": {"identifier": {"system": DOCUMENTS, "value": url}}} for url in documents or ()
    ]
    described += [{"what": {"reference": reference}} for reference in dict.fromkeys(entities)]
    if described:
        event["entity"] = described
    return event


@dataclass
class _Tally:
    count: int
    first: datetime
    last: datetime


class RefusalAggregator:
    """Unauthenticated refusals, counted in memory and written as one AuditEvent per kind and window.

    A kind is (address, action, resource, reason). At most ``max_keys`` kinds are kept per window; the
    rest (an attacker inventing a new reason or address for every request) are counted together in one
    overflow event, so a window costs at most ``max_keys + 1`` writes however the refusals vary. Counts are
    written when the window ends and when the server stops; a crash loses at most one window of counts,
    which is the price of not writing each refusal of a flood.
    """

    def __init__(self, store: ResourceStore, *, window_seconds: float = 60.0, max_keys: int = 1000) -> None:
        self.store = store
        self.window_seconds = window_seconds
        self.max_keys = max_keys
        self._tallies: dict[tuple[str | None, str, str, str], _Tally] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def add(self, *, address: str | None, action: str, resource: str, reason: str) -> None:
        """Count one refusal (no I/O: this is what a flood of bad requests costs)."""
        key = (address, action, resource[:200], reason[:300])
        if key not in self._tallies and len(self._tallies) >= self.max_keys:
            reason = f"other refusals (more than {self.max_keys} distinct addresses and reasons in one window)"
            key = (None, "*", "-", reason)
        moment = now()
        tally = self._tallies.get(key)
        if tally is None:
            self._tallies[key] = _Tally(1, moment, moment)
        else:
            tally.count += 1
            tally.last = moment
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(), name="fhir-fax-refusal-audit")

    async def _flush_later(self) -> None:
        await wait_for_event(self._closing, self.window_seconds)
        await self.flush()

    async def flush(self) -> None:
        """Write one event per kind counted so far (a failure is logged: the requests were answered long ago)."""
        tallies, self._tallies = self._tallies, {}
        if not tallies:
            return
        events = [self._event(key, tally) for key, tally in tallies.items()]
        try:
            await self.store.create_many(events, validated=True)
        except Exception:
            log.exception("could not record %d aggregated refusal events", len(events))

    async def close(self) -> None:
        """Write what is counted (the server is stopping)."""
        self._closing.set()
        if self._flusher is not None:
            await self._flusher
            self._flusher = None
        await self.flush()

    @staticmethod
    def _event(key: tuple[str | None, str, str, str], tally: _Tally) -> dict[str, Any]:
        address, action, resource, reason = key
        first, last = format_instant(tally.first), format_instant(tally.last)
        times = "1 time" if tally.count == 1 else f"{tally.count} times"
        description = f"{action} on {resource} refused: {reason} ({times} from {first} to {last})"
        event = audit_event(
            subtype=(FAX_EVENTS, "access-refused"), action="E", outcome=MINOR_FAILURE, who=ANONYMOUS,
            address=address, entities=[], description=description,
        )  # fmt: skip
        event["period"] = {"start": first, "end": last}
        event["extension"] = [{"url": REFUSAL_COUNT, "valueInteger": tally.count}]
        return event


class Auditor:
    def __init__(self, store: ResourceStore) -> None:
        self.store = store
        # Events recorded while a write is in flight are stored together in the next one.
        self.writer: GroupWrites[dict[str, Any]] = GroupWrites(self._store_events)
        # A fax's status changes are background work: while they come together, their events wait a little for
        # each other (``GroupWrites.linger``); a client's request never does.
        self.status_writer: GroupWrites[dict[str, Any]] = GroupWrites(self._store_events, linger=STATUS_LINGER)

        self.refusals = RefusalAggregator(store)

    async def close(self) -> None:
        """Write the refusals still being counted, and the events on their way (call when the server stops)."""
        await self.refusals.close()
        await self.status_writer.close()
        await self.writer.close()

    async def _store_events(self, events: list[dict[str, Any]]) -> None:
        await self.store.create_many(events, validated=True)  # built by audit_event, which the tests validate

    async def record(self, *, writer: GroupWrites[dict[str, Any]] | None = None, **fields: Any) -> None:
        try:
            await (writer or self.writer).add(audit_event(**fields))
        except Exception:
            log.exception("could not record an audit event: %s", fields.get("description"))

    def fax_sent_event(self, communication: dict[str, Any], who: str, address: str | None) -> dict[str, Any]:
        """The event of an accepted fax, for the sender to store in the same transaction as the fax."""
        return audit_event(
            subtype=(FAX_EVENTS, "send-fax"), action="C", outcome=SUCCESS, who=who, address=address,
            entities=[f"Communication/{communication['id']}", *references_in(communication)],
            description="A fax was accepted for sending.",
        )  # fmt: skip

    async def fax_status(self, communication: dict[str, Any], status: str) -> None:
        await self.record(
            writer=self.status_writer,
            subtype=(FAX_EVENTS, "fax-status"), action="U", outcome=SUCCESS, who="fhir-fax delivery", address=None,
            entities=[f"Communication/{communication['id']}", *references_in(communication)],
            description=f"The fax is now {status}.",
        )  # fmt: skip

    async def read(self, interaction: str, resources: list[dict[str, Any]], who: str, address: str | None) -> None:
        """A disclosure of Communications: a FHIR read/vread/history/search, or a fax's ``preview``."""
        entities = []
        for resource in resources:
            entities.append(f"{resource['resourceType']}/{resource['id']}")
            entities.extend(references_in(resource))
        system = INTERACTIONS if interaction in RESTFUL else FAX_EVENTS
        await self.record(
            subtype=(system, interaction), action="E" if interaction == "search-type" else "R",
            outcome=SUCCESS, who=who, address=address, entities=entities,
            description=f"{interaction} returned {len(resources)} {_kinds(resources)}.",
        )  # fmt: skip

    async def document_read(self, url: str, carriers: list[dict[str, Any]], who: str, address: str | None) -> None:
        """A document was handed out (a signed download URL): the document, and the faxes and patients it is in."""
        entities = []
        for communication in carriers:
            entities.append(f"Communication/{communication['id']}")
            entities.extend(references_in(communication))
        await self.record(
            subtype=(FAX_EVENTS, "document-read"), action="R", outcome=SUCCESS, who=who, address=address,
            entities=entities, documents=[url],
            description=f"A download of {url} was signed ({len(carriers)} fax(es) carry it).",
        )  # fmt: skip

    async def refused(self, action: str, resource: str, who: str, address: str | None, reason: str) -> None:
        """An authenticated client's refusal is written at once; an anonymous one is counted (see above)."""
        if who == ANONYMOUS:
            self.refusals.add(address=address, action=action, resource=resource, reason=reason)
            return
        await self.record(
            subtype=(FAX_EVENTS, "access-refused"), action="E", outcome=MINOR_FAILURE, who=who, address=address,
            entities=[], description=f"{action} on {resource} refused: {reason}",
        )  # fmt: skip


def _kinds(resources: list[dict[str, Any]]) -> str:
    """``Communication(s)``, or each type read (a filed fax is a DocumentReference)."""
    kinds = sorted({str(r.get("resourceType")) for r in resources}) or ["Communication"]
    return ", ".join(f"{kind}(s)" for kind in kinds)


def references_in(communication: dict[str, Any]) -> list[str]:
    """The patient, sender and recipients a Communication names (not contained ones)."""
    found = []
    for element in ("subject", "sender"):
        reference = (communication.get(element) or {}).get("reference")
        if reference and not reference.startswith("#"):
            found.append(reference)
    for recipient in communication.get("recipient", []):
        reference = recipient.get("reference")
        if reference and not reference.startswith("#"):
            found.append(reference)
    return found
