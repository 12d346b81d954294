"""``$send-fax``: a request becomes a validated Communication plus its outbox job, exactly once.

Order of work: everything that can be checked without the database first (parameters,
reference syntax and types, numbers, media URL), then the look-ups (resources,
onboarded numbers, the media object) concurrently, then one transaction writing the
Communication, its job and the idempotency record. Any refusal happens before the
first write, so a refused request stores and queues nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from ..db import in_transaction
from ..errors import BadGateway, Forbidden, GatewayTimeout, Invalid, Unavailable, Unprocessable
from ..fhir.models import format_instant, now
from ..fhir.store import ResourceStore
from ..settings import Settings
from ..z3.locations import Z3Location
from ..z3.store import Z3Store
from .cover import MAX_NOTE, CoverSheet, display_name, first_phone
from .idempotency import IdempotencyRecords
from .media import MediaChecker, MediaInfo, MediaProblem, document_fields, media_fields, parse_media_url
from .numbers import FaxNumbers
from .operation import SendFaxRequest, allowed_types
from .outbox import FaxJob, Outbox
from .phone import NumberProblem, check_fax_number
from .references import Reference, ReferenceResolver, ResolutionError, parse_reference
from .telecom import fax_entries
from .terminology import PAGES_EXTENSION, QUALITIES, fax_identifier, fax_medium, outbound_status_extension


class StorageUnavailable(Unavailable):
    """The database could not take the write; retrying later may succeed."""


@dataclass(frozen=True)
class Caller:
    """What the request says about who is calling and how to reach back to this server."""

    authorization: str | None
    idempotency_key: str | None
    fhir_bases: tuple[str, ...]
    project_api_bases: tuple[str, ...]
    # Raises 403 unless the caller may (action, resource); None for trusted local callers (the CLI).
    authorize: Callable[[str, str], Awaitable[None]] | None = None
    who: str = "local"
    address: str | None = None
    # A token limited to one patient (SMART patient/ scopes) may only send faxes about that patient.
    patient: str | None = None


@dataclass(frozen=True)
class SendResult:
    communication: dict[str, Any]
    replayed: bool


@dataclass(frozen=True)
class Lookups:
    """What the look-ups found: the numbers to send from and to, the documents (in order) and the resources."""

    from_number: str
    to_number: str
    documents: tuple[MediaInfo, ...]
    sender: dict[str, Any] | None = None
    recipient: dict[str, Any] | None = None
    patient: dict[str, Any] | None = None

    @property
    def media(self) -> MediaInfo:
        """The first document (a one-document fax's only one)."""
        return self.documents[0]

    @property
    def document_pages(self) -> int:
        return sum(document.pages or 0 for document in self.documents)


@dataclass(frozen=True)
class Prepared:
    """A send that passed every check: what it will record and fax (also what a dry run shows)."""

    checked: CheckedRequest
    found: Lookups
    cover: CoverSheet | None
    pages: int  # the whole fax, cover included

    @property
    def packet(self) -> bool:
        """A cover or several documents: the job lists its documents and the Communication its total pages."""
        return self.cover is not None or len(self.found.documents) > 1


@dataclass(frozen=True)
class CheckedRequest:
    """A request whose form is valid: parsed references, recipient number and media location."""

    request: SendFaxRequest
    sender: Reference
    recipient: Reference | None
    recipient_number: str | None
    patient: Reference | None
    documents: tuple[Z3Location, ...]
    cover: bool = False

    @property
    def media(self) -> Z3Location:
        return self.documents[0]


class FaxService:
    """Sends faxes: validation, the Communication, the outbox job and idempotency."""

    def __init__(
        self,
        settings: Settings,
        database: Any,
        store: ResourceStore,
        resolver: ReferenceResolver,
        media: MediaChecker,
        *,
        auditor: Any = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.store = store
        self.resolver = resolver
        self.media = media
        self.numbers = FaxNumbers(database)
        self.outbox = Outbox(database)
        self.idempotency = IdempotencyRecords(database, settings.idempotency_ttl_seconds)
        self.z3 = Z3Store(database)
        self.auditor = auditor  # fhir_fax.audit.Auditor: every runtime has one (see fhir_fax.runtime)

    async def ensure_indexes(self) -> None:
        await self.outbox.ensure_indexes()
        await self.idempotency.ensure_indexes()
        await self.z3.ensure_indexes()

    async def onboard(self, number: str | None) -> str:
        return await self.numbers.onboard_for_project(number, self.settings.carrier, self.settings.carrier_fax_number)

    async def send(
        self, request: SendFaxRequest, caller: Caller, *, pinned: tuple[MediaInfo, ...] | None = None
    ) -> SendResult:
        """Check, then record once. ``pinned``: the documents as an earlier fax froze them (a resend)."""
        checked = await self.check_request(request, caller)
        # Keys are scoped to the caller: another client's key never replays someone else's fax.
        key = f"{caller.who}\x1f{caller.idempotency_key}" if caller.idempotency_key else None
        if key:
            earlier = await self.idempotency.replay(key, request.fingerprint())
            if earlier is not None:
                return SendResult(earlier, replayed=True)
        prepared = await self.prepare(checked, caller, pinned)
        try:
            communication = await self.record(prepared, key, caller)
        except DuplicateKeyError:
            # The same key won a race with us; answer what it answered.
            earlier = await self.idempotency.replay(key or "", request.fingerprint())
            if earlier is None:
                raise
            return SendResult(earlier, replayed=True)
        return SendResult(communication, replayed=False)

    async def check_request(self, request: SendFaxRequest, caller: Caller) -> CheckedRequest:
        """The form, then the caller's right to everything the fax names (nothing is looked up yet)."""
        checked = self.check_form(request, caller)
        if caller.authorize is not None:
            await self.check_access(checked, caller.authorize)
        if caller.patient is not None:
            require_named_patient(checked, caller.patient)
        return checked

    async def prepare(
        self, checked: CheckedRequest, caller: Caller, pinned: tuple[MediaInfo, ...] | None = None
    ) -> Prepared:
        """The look-ups, the limits of the whole fax and its cover sheet: everything but the write."""
        found = await self.look_up(checked, caller, pinned)
        pages = found.document_pages + (1 if checked.cover else 0)
        self.check_limits(checked, found, pages)
        cover = self.cover_sheet(checked, found, pages, now()) if checked.cover else None
        return Prepared(checked, found, cover, pages)

    def check_limits(self, checked: CheckedRequest, found: Lookups, pages: int) -> None:
        """The whole fax against the page and byte limits, before anything is stored; the refusal gives figures."""
        named = list(zip(checked.request.documents, found.documents, strict=True))
        if pages > self.settings.max_pages:
            parts = [f"{url}: {info.pages}" for url, info in named]
            advice = "Send the documents in separate faxes."
            if checked.cover:
                parts.insert(0, "cover sheet: 1")
                if pages - 1 <= self.settings.max_pages:
                    advice = "Send it without a cover sheet (coverPage false), or split the documents."
            raise Unprocessable(
                f"media: the fax would have {pages} pages ({'; '.join(parts)}); at most {self.settings.max_pages} "
                f"pages can be faxed at once. {advice}",
                expression=["media"],
            )
        total = sum(info.size for info in found.documents)
        if total > self.settings.max_fax_bytes:
            parts = [f"{url}: {info.size:,}" for url, info in named]
            raise Unprocessable(
                f"media: the documents come to {total:,} bytes together ({'; '.join(parts)}); at most "
                f"{self.settings.max_fax_bytes:,} bytes can be faxed at once. Send the documents in separate faxes.",
                expression=["media"],
            )

    def cover_sheet(self, checked: CheckedRequest, found: Lookups, pages: int, moment: datetime) -> CoverSheet:
        """What the cover will say, frozen now; the patient's name only where the project allows it."""
        settings = self.settings
        patient = display_name(found.patient) if settings.cover_patient_name else None
        recipient_name = display_name(found.recipient) if checked.recipient is not None else None
        return CoverSheet(
            sender_name=display_name(found.sender) or str(checked.sender),
            sender_fax=found.from_number,
            sender_phone=first_phone(found.sender),
            recipient_name=recipient_name,
            recipient_fax=found.to_number,
            sent=format_instant(moment),
            pages=pages,
            note=checked.request.coverNote,
            notice=settings.cover_notice,
            patient=patient,
        )

    # -- checks that need no database ----------------------------------------------------------------

    def check_form(self, request: SendFaxRequest, caller: Caller) -> CheckedRequest:
        if request.quality not in QUALITIES:
            raise Invalid(
                f"quality must be one of {', '.join(QUALITIES)}; got {request.quality!r}.",
                expression=["quality"],
            )
        if (request.recipient is None) == (request.recipientNumber is None):
            raise Invalid(
                "Give exactly one of 'recipient' (a reference such as Practitioner/123) and 'recipientNumber' "
                "(an E.164 fax number)" + (", not both." if request.recipient else "; neither was given."),
                expression=["recipient", "recipientNumber"],
            )
        recipient_number = None
        if request.recipientNumber is not None:
            try:
                recipient_number = check_fax_number(
                    request.recipientNumber, require_valid=self.settings.require_valid_numbers
                )
            except NumberProblem as problem:
                raise Invalid(f"recipientNumber: {problem}", expression=["recipientNumber"]) from None
        documents = []
        for index, url in enumerate(request.documents):
            try:
                documents.append(parse_media_url(url, caller.project_api_bases))
            except MediaProblem as problem:
                raise Invalid(f"{media_name(request, index)}: {problem}", expression=["media"]) from None
        if request.coverNote is not None and len(request.coverNote) > MAX_NOTE:
            raise Invalid(
                f"coverNote is {len(request.coverNote)} characters long; at most {MAX_NOTE} fit on a cover sheet. "
                "Shorten it.",
                expression=["coverNote"],
            )
        if request.coverNote and request.coverPage is False:
            raise Invalid(
                "coverNote goes on the cover sheet, but coverPage is false; drop coverNote or set coverPage to true.",
                expression=["coverPage", "coverNote"],
            )
        cover = request.coverPage
        if cover is None:
            cover = bool(request.coverNote) or self.settings.cover_page_default
        return CheckedRequest(
            request=request,
            sender=self._reference("sender", request.sender, caller),
            recipient=self._reference("recipient", request.recipient, caller) if request.recipient else None,
            recipient_number=recipient_number,
            patient=self._reference("patient", request.patient, caller) if request.patient else None,
            documents=tuple(documents),
            cover=cover,
        )

    def _reference(self, parameter: str, value: str, caller: Caller) -> Reference:
        types = allowed_types(parameter)
        reference = parse_reference(value, caller.fhir_bases)
        if reference is None:
            raise Invalid(
                f"{parameter}: {value!r} is not a FHIR reference; write it as Type/id, e.g. '{types[0]}/123'.",
                expression=[parameter],
            )
        if reference.resource_type not in types:
            raise Invalid(
                f"{parameter}: a {reference.resource_type} cannot be the {parameter} of a fax; "
                f"use one of {', '.join(types)}.",
                expression=[parameter],
            )
        return reference

    async def check_access(self, checked: CheckedRequest, authorize: Callable[[str, str], Awaitable[None]]) -> None:
        """A client may only fax what it could read: the sender, recipient, patient and the document."""
        for reference in (checked.sender, checked.recipient, checked.patient):
            if reference is not None:
                await authorize("FHIR:Read", f"FHIR:{reference.resource_type}:{reference.id}")
        for document in checked.documents:
            await authorize("Z3:GetObject", f"Z3:{document.bucket}/{document.key}")

    # -- look-ups --------------------------------------------------------------------------------------

    async def look_up(
        self, checked: CheckedRequest, caller: Caller, pinned: tuple[MediaInfo, ...] | None = None
    ) -> Lookups:
        """Resolve the references and check every document, all at once (``pinned``: already frozen ones)."""
        moment = now()
        sender_task = self._resolve("sender", checked.sender, caller)
        recipient_task = self._resolve("recipient", checked.recipient, caller)
        patient_task = self._resolve("patient", checked.patient, caller)
        media_task = self._check_all(checked, caller) if pinned is None else self._still_pinned(checked, pinned)
        results = await asyncio.gather(
            sender_task, recipient_task, patient_task, media_task, self.numbers.list(), return_exceptions=True
        )
        for result in results:  # report problems in parameter order, whichever finished first
            if isinstance(result, BaseException):
                raise result
        sender, recipient, patient, documents, onboarded = results
        from_number = self._sender_number(checked.sender, sender, set(onboarded), moment)
        to_number = checked.recipient_number or self._fax_number("recipient", checked.recipient, recipient, moment)
        return Lookups(from_number, to_number, tuple(documents), sender, recipient, patient)

    async def _check_all(self, checked: CheckedRequest, caller: Caller) -> list[MediaInfo]:
        """Every document at once; a refusal names the first refused one in the order given."""
        checks = [
            self._check_media(location, caller, media_name(checked.request, index))
            for index, location in enumerate(checked.documents)
        ]
        results = await asyncio.gather(*checks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [result for result in results if isinstance(result, MediaInfo)]

    async def _still_pinned(self, checked: CheckedRequest, pinned: tuple[MediaInfo, ...]) -> list[MediaInfo]:
        """Documents frozen by an earlier send: each version must still be stored."""
        for index, info in enumerate(pinned):
            if info.version is None or await self.z3.version_info(info.version) is None:
                raise Unprocessable(
                    f"{media_name(checked.request, index)}: the version of {checked.request.documents[index]} "
                    "faxed before is no longer stored; send the document again as a new fax.",
                    expression=["media"],
                )
        return list(pinned)

    async def _resolve(self, parameter: str, reference: Reference | None, caller: Caller) -> dict[str, Any] | None:
        if reference is None:
            return None
        try:
            return await self.resolver.resolve(reference, authorization=caller.authorization)
        except ResolutionError as error:
            message = f"{parameter}: {error.detail}"
            if error.kind in ("not-found", "deleted"):
                raise Unprocessable(
                    f"{message}; create it first or fix the reference.", expression=[parameter]
                ) from None
            if error.kind == "refused":
                raise Forbidden(message + ".", expression=[parameter]) from None
            if error.kind == "timeout":
                raise GatewayTimeout(message + "; retry later.", expression=[parameter]) from None
            raise BadGateway(message + "; retry later.", expression=[parameter]) from None

    async def _check_media(self, location: Z3Location, caller: Caller, name: str = "media") -> MediaInfo:
        try:
            return await self.media.check(location, authorization=caller.authorization)
        except MediaProblem as problem:
            raise Unprocessable(f"{name}: {problem}", expression=["media"]) from None

    def _fax_number(
        self, parameter: str, reference: Reference | None, resource: dict[str, Any] | None, moment: datetime
    ) -> str:
        assert reference is not None and resource is not None
        entries = fax_entries(resource, moment)
        if not entries:
            raise Unprocessable(
                f"{parameter}: {reference} has no current fax number; add a telecom with system 'fax' and an "
                "E.164 value (e.g. +12223334444).",
                expression=[parameter],
            )
        try:
            return check_fax_number(entries[0], require_valid=self.settings.require_valid_numbers)
        except NumberProblem as problem:
            raise Unprocessable(
                f"{parameter}: the fax number of {reference} is not usable: {problem}", expression=[parameter]
            ) from None

    def _sender_number(
        self, reference: Reference, resource: dict[str, Any] | None, onboarded: set[str], moment: datetime
    ) -> str:
        preferred = self._fax_number("sender", reference, resource, moment)
        assert resource is not None
        for number in [preferred, *fax_entries(resource, moment)[1:]]:
            if number in onboarded:
                return number
        raise Unprocessable(
            f"sender: the fax number {preferred} of {reference} is not onboarded to this project; onboard it with "
            f'POST /fax/v1/onboard {{"faxNumber": "{preferred}"}} (or `fhir-fax numbers onboard {preferred}`), '
            "or send from a resource whose fax number is onboarded.",
            expression=["sender"],
        )

    # -- the one write ------------------------------------------------------------------------------------

    def build_communication(self, prepared: Prepared, fax_id: str, moment: datetime) -> dict[str, Any]:
        checked = prepared.checked
        payload = [
            {"contentAttachment": attachment(url, info)}
            for url, info in zip(checked.request.documents, prepared.found.documents, strict=True)
        ]
        communication: dict[str, Any] = {
            "resourceType": "Communication",
            "status": "in-progress",
            "medium": [fax_medium()],
            "payload": payload,
            "sender": {"reference": str(checked.sender)},
            "sent": format_instant(moment),
            "identifier": [fax_identifier(fax_id)],
            "extension": [outbound_status_extension("QUEUED")],
        }
        if checked.recipient is not None:
            communication["recipient"] = [{"reference": str(checked.recipient)}]
        else:
            number = checked.recipient_number or ""
            contained_id = contained_practitioner_id(number)
            communication["contained"] = [
                {
                    "resourceType": "Practitioner",
                    "id": contained_id,
                    "telecom": [{"system": "fax", "value": number}],
                }
            ]
            communication["recipient"] = [{"reference": f"#{contained_id}"}]
        if checked.patient is not None:
            communication["subject"] = {"reference": str(checked.patient)}
        if checked.request.resendOf is not None:
            communication["partOf"] = [{"reference": f"Communication/{checked.request.resendOf}"}]
        if prepared.packet:  # the whole fax, cover included (the job keeps it, so every status keeps it too)
            communication["extension"].append({"url": PAGES_EXTENSION, "valueInteger": prepared.pages})
        return communication

    async def record(self, prepared: Prepared, key: str | None, caller: Caller) -> dict[str, Any]:
        """Write the Communication, its job, the idempotency record and the audit event in one transaction."""
        checked, found = prepared.checked, prepared.found
        for index, (location, info) in enumerate(zip(checked.documents, found.documents, strict=True)):
            await self.pin(location, info, media_name(checked.request, index))
        moment = now()
        fax_id = str(uuid.uuid4())
        communication_id = str(uuid.uuid4())
        communication = self.build_communication(prepared, fax_id, moment)
        packet: dict[str, Any] = {}
        cover = prepared.cover
        if prepared.packet:
            packet = {
                "documents": [
                    {"media": str(location), **document_fields(info)}
                    for location, info in zip(checked.documents, found.documents, strict=True)
                ],
                # the cover carries the moment the Communication says it was sent
                "cover": None if cover is None else replace(cover, sent=format_instant(moment)).document(),
                "pages": prepared.pages,
            }
        job = FaxJob(
            fax_id=fax_id,
            communication_id=communication_id,
            media=str(checked.media),
            quality=checked.request.quality,
            from_number=found.from_number,
            to_number=found.to_number,
            created=moment,
            kill_at=moment + timedelta(seconds=self.settings.kill_time_seconds),
            **media_fields(found.media),  # the version inspected above, pinned: what the fax will carry
            **packet,
            resend_of=checked.request.resendOf,
        )

        async def write(session: Any) -> dict[str, Any]:
            # Built here in the shape the tests validate against the FHIR model; checking it again costs more
            # than the write.
            stored = await self.store.create(
                communication, resource_id=communication_id, moment=moment, session=session, validated=True
            )
            await self.outbox.enqueue(job, session=session)
            if key:
                await self.idempotency.remember(key, checked.request.fingerprint(), stored, session=session)
            if self.auditor is not None:
                event = self.auditor.fax_sent_event(stored, caller.who, caller.address)
                await self.store.create(event, moment=moment, session=session, validated=True)
            return stored

        try:
            stored = await in_transaction(self.database.client, write)
        except DuplicateKeyError:
            raise
        except PyMongoError:
            raise StorageUnavailable(
                "The fax could not be recorded because the database did not accept the write; nothing was stored "
                "or sent. Retry the same request (with the same Idempotency-Key)."
            ) from None
        self.outbox.committed()  # the job is visible now: a worker in this process takes it without waiting
        self.store.committed("Communication", communication_id)  # its PROCESSING version needs no read
        return stored

    async def pin(self, location: Z3Location, media: MediaInfo, name: str = "media") -> None:
        """Keep the inspected version for the fax (replacing or deleting the key no longer removes it).

        Done after every check has passed, so a refused request pins nothing, and before the job is written,
        so the job never names a version that may still be pruned. If the version was pruned between the
        inspection and now, the request is refused and nothing is stored. A version the look-up found pinned
        already (an earlier fax of the same upload) is never pruned, so it costs no write.
        """
        if media.version is None or media.pinned:
            return
        if not await self.z3.pin(media.version, location, media.sha1):
            raise Unprocessable(
                f"{name}: the Z3 object at {location} was replaced or deleted while it was checked; send again.",
                expression=["media"],
            )


def media_name(request: SendFaxRequest, index: int) -> str:
    """How a refusal names a document: ``media`` alone, or ``media[2]`` (from 1) when there are several."""
    return "media" if len(request.documents) == 1 else f"media[{index + 1}]"


def attachment(url: str, media: MediaInfo) -> dict[str, Any]:
    """One payload entry's attachment: the document as it was checked and pinned."""
    found: dict[str, Any] = {"url": url, "size": media.size}
    if media.content_type:
        found["contentType"] = media.content_type
    if media.sha1:
        found["hash"] = media.sha1
    if media.pages:
        found["extension"] = [{"url": PAGES_EXTENSION, "valueInteger": media.pages}]
    return found


def contained_practitioner_id(number: str) -> str:
    """A valid FHIR id for the contained recipient: the number's digits (``+12223334444`` -> ``12223334444``).

    The hosted service uses the number itself (``+12223334444``) as the id, which FHIR does not
    allow (ids are ``[A-Za-z0-9\\-.]{1,64}``), so the ``+`` is dropped.
    """
    return number.lstrip("+")


def require_named_patient(checked: CheckedRequest, patient_id: str) -> None:
    """403 unless the fax is about ``patient_id``: its Communication must fall in that patient's compartment."""
    named = checked.patient
    if named is None or named.resource_type != "Patient" or named.id != patient_id:
        raise Forbidden(
            f"patient: this token is limited to Patient/{patient_id}; a fax it sends must name that patient "
            f"(patient=Patient/{patient_id}).",
            expression=["patient"],
        )
