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
from dataclasses import dataclass
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
from .idempotency import IdempotencyRecords
from .media import MediaChecker, MediaInfo, MediaProblem, media_fields, parse_media_url
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
    """What the look-ups found: the numbers to send from and to, and the document."""

    from_number: str
    to_number: str
    media: MediaInfo


@dataclass(frozen=True)
class CheckedRequest:
    """A request whose form is valid: parsed references, recipient number and media location."""

    request: SendFaxRequest
    sender: Reference
    recipient: Reference | None
    recipient_number: str | None
    patient: Reference | None
    media: Z3Location


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

    async def send(self, request: SendFaxRequest, caller: Caller) -> SendResult:
        checked = self.check_form(request, caller)
        if caller.authorize is not None:
            await self.check_access(checked, caller.authorize)
        if caller.patient is not None:
            require_named_patient(checked, caller.patient)
        # Keys are scoped to the caller: another client's key never replays someone else's fax.
        key = f"{caller.who}\x1f{caller.idempotency_key}" if caller.idempotency_key else None
        if key:
            earlier = await self.idempotency.replay(key, request.fingerprint())
            if earlier is not None:
                return SendResult(earlier, replayed=True)
        found = await self.look_up(checked, caller)
        try:
            communication = await self.record(checked, found, key, caller)
        except DuplicateKeyError:
            # The same key won a race with us; answer what it answered.
            earlier = await self.idempotency.replay(key or "", request.fingerprint())
            if earlier is None:
                raise
            return SendResult(earlier, replayed=True)
        return SendResult(communication, replayed=False)

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
        try:
            media = parse_media_url(request.media, caller.project_api_bases)
        except MediaProblem as problem:
            raise Invalid(f"media: {problem}", expression=["media"]) from None
        return CheckedRequest(
            request=request,
            sender=self._reference("sender", request.sender, caller),
            recipient=self._reference("recipient", request.recipient, caller) if request.recipient else None,
            recipient_number=recipient_number,
            patient=self._reference("patient", request.patient, caller) if request.patient else None,
            media=media,
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
        await authorize("Z3:GetObject", f"Z3:{checked.media.bucket}/{checked.media.key}")

    # -- look-ups --------------------------------------------------------------------------------------

    async def look_up(self, checked: CheckedRequest, caller: Caller) -> Lookups:
        """Resolve the references and check the media object, all at once."""
        moment = now()
        sender_task = self._resolve("sender", checked.sender, caller)
        recipient_task = self._resolve("recipient", checked.recipient, caller)
        patient_task = self._resolve("patient", checked.patient, caller)
        media_task = self._check_media(checked.media, caller)
        results = await asyncio.gather(
            sender_task, recipient_task, patient_task, media_task, self.numbers.list(), return_exceptions=True
        )
        for result in results:  # report problems in parameter order, whichever finished first
            if isinstance(result, BaseException):
                raise result
        sender, recipient, _patient, media, onboarded = results
        from_number = self._sender_number(checked.sender, sender, set(onboarded), moment)
        to_number = checked.recipient_number or self._fax_number("recipient", checked.recipient, recipient, moment)
        return Lookups(from_number, to_number, media)

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

    async def _check_media(self, location: Z3Location, caller: Caller) -> MediaInfo:
        try:
            return await self.media.check(location, authorization=caller.authorization)
        except MediaProblem as problem:
            raise Unprocessable(f"media: {problem}", expression=["media"]) from None

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

    def build_communication(
        self, checked: CheckedRequest, media: MediaInfo, fax_id: str, moment: datetime
    ) -> dict[str, Any]:
        request = checked.request
        attachment: dict[str, Any] = {"url": request.media, "size": media.size}
        if media.content_type:
            attachment["contentType"] = media.content_type
        if media.sha1:
            attachment["hash"] = media.sha1
        if media.pages:
            attachment["extension"] = [{"url": PAGES_EXTENSION, "valueInteger": media.pages}]
        communication: dict[str, Any] = {
            "resourceType": "Communication",
            "status": "in-progress",
            "medium": [fax_medium()],
            "payload": [{"contentAttachment": attachment}],
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
        return communication

    async def record(self, checked: CheckedRequest, found: Lookups, key: str | None, caller: Caller) -> dict[str, Any]:
        """Write the Communication, its job, the idempotency record and the audit event in one transaction."""
        await self.pin(checked.media, found.media)
        moment = now()
        fax_id = str(uuid.uuid4())
        communication_id = str(uuid.uuid4())
        communication = self.build_communication(checked, found.media, fax_id, moment)
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
            return await in_transaction(self.database.client, write)
        except DuplicateKeyError:
            raise
        except PyMongoError:
            raise StorageUnavailable(
                "The fax could not be recorded because the database did not accept the write; nothing was stored "
                "or sent. Retry the same request (with the same Idempotency-Key)."
            ) from None

    async def pin(self, location: Z3Location, media: MediaInfo) -> None:
        """Keep the inspected version for the fax (replacing or deleting the key no longer removes it).

        Done after every check has passed, so a refused request pins nothing, and before the job is written,
        so the job never names a version that may still be pruned. If the version was pruned between the
        inspection and now, the request is refused and nothing is stored.
        """
        if media.version is not None and not await self.z3.pin(media.version, location, media.sha1):
            raise Unprocessable(
                f"media: the Z3 object at {location} was replaced or deleted while it was checked; send again.",
                expression=["media"],
            )


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
