"""Reception: a fax that arrives at an onboarded number becomes a Communication, its document kept in Z3, and a Task.

Whichever way it comes (a carrier's verified webhook, the simulator, ``fhir-fax inbound simulate``), a received
fax goes through ``Reception.receive`` and only there. Order of work, so that a refusal stores nothing:

1. the called number must be onboarded (else refused, logged, nothing stored);
2. the same carrier fax already received is answered with what was stored then (webhooks repeat);
3. the document passes the hostile-document guards in the sandbox, and a TIFF becomes a PDF
   (``inbound_document.accept``);
4. the PDF (and the carrier's original when it differs) is written to Z3, bucket ``FHIR_FAX_INBOUND_BUCKET``,
   key ``{yyyy-mm-dd}-{fax id}.pdf`` (one path segment, so that a policy on ``Z3:fax-received/*``, as
   Ottehr's fax integration has, reaches every received fax);
5. one transaction writes the reception record (``inbound_faxes``, ``_id`` = carrier + carrier's fax id: the
   unique key that makes two deliveries of the same fax one), the Communication, the triage Task and the
   AuditEvent.

The Communication has the shape the hosted service gives received faxes and Ottehr reads (``inbound_shape.py``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from ..audit import FAX_EVENTS, SUCCESS, audit_event
from ..db import in_transaction, stop_if_cancelled
from ..errors import Unavailable, Unprocessable
from ..fhir.models import now
from ..fhir.store import ResourceStore
from ..settings import Settings
from ..z3.locations import Z3Location
from ..z3.store import Z3Store
from .documents import DocumentProblem
from .inbound_document import PDF, AcceptedDocument, accept, read_texts
from .inbound_repair import REPAIRED, repair_received
from .inbound_shape import Documents, caller_number, received_communication, triage_task
from .numbers import OWNER_TYPES, FaxNumbers
from .phone import E164
from .suggestions import SENDER_TYPES, patient_suggestions, sender_suggestions
from .transports.base import InboundMedia, InboundNotice

log = logging.getLogger("fhir_fax.inbound")

COLLECTION = "inbound_faxes"
FAX_IDS = uuid.UUID("6f1d3c1e-4b7a-4c55-9a51-0c2b5e7f9d10")  # namespace: our fax id from the carrier's


class NotOnboarded(Unprocessable):
    """The fax was sent to a number this project has not onboarded: refused, nothing stored."""


class ReceptionUnavailable(Unavailable):
    """The database did not take the reception's write; the carrier's retry will deliver it again."""


@dataclass(frozen=True)
class Received:
    communication: dict[str, Any]
    task: dict[str, Any] | None
    duplicate: bool  # this carrier fax had been received before: nothing new was stored


@dataclass(frozen=True)
class Stored:
    """Where the document of one fax was put (and the Z3 versions written, to discard if another delivery won)."""

    pdf: Z3Location
    info: AcceptedDocument
    original: Z3Location | None
    versions: tuple[Any, ...] = ()


def fax_id_of(carrier: str, carrier_fax_id: str) -> str:
    """Our fax id for a carrier's received fax: the same for every delivery of it (so the same Z3 key)."""
    return str(uuid.uuid5(FAX_IDS, f"{carrier}:{carrier_fax_id}"))


class Reception:
    """Receives faxes: the number check, duplicates, the document, and the one write."""

    def __init__(
        self,
        settings: Settings,
        database: Any,
        store: ResourceStore,
        z3: Z3Store,
        numbers: FaxNumbers,
        *,
        project_api_base: str | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.store = store
        self.z3 = z3
        self.numbers = numbers
        self.records = database[COLLECTION]
        # Attachment URLs in the project API's form when the public address is known (as the hosted service
        # writes them), else z3://bucket/key; both name the same object.
        self.project_api_base = project_api_base
        self._later: set[asyncio.Task[dict[str, Any]]] = set()  # suggestions made after the answer

    async def ensure_indexes(self) -> None:
        await self.records.create_index("documents", name="documents")
        await self.records.create_index("communication_id", name="communication")
        await self.records.create_index("repaired", name="repaired")
        await repair_received(self.records, self.store, self.z3)  # once: what was received before the fixes
        # What each reception looks up (suggestions.py, numbers.find_owner): patients by birth date or
        # identifier, senders and owners by fax number; without these every fax would scan the collections.
        await self.database["Patient"].create_index("birthDate", name="inbound_birth_date")
        await self.database["Patient"].create_index("identifier.value", name="inbound_identifier")
        for resource_type in dict.fromkeys((*SENDER_TYPES, *OWNER_TYPES)):
            await self.database[resource_type].create_index("telecom.value", name="inbound_telecom")

    # -- the steps before anything is stored -----------------------------------------------------------

    async def check_number(self, notice: InboundNotice, carrier: str) -> dict[str, Any]:
        """The onboarded number's record; NotOnboarded (logged) when the fax was not sent to one of ours."""
        record = await self.numbers.record(notice.to_number) if E164.fullmatch(notice.to_number) else None
        if record is None:
            log.warning(
                "%s fax %s to %.20r refused: the number is not onboarded; nothing was stored",
                carrier, notice.carrier_fax_id, notice.to_number,
            )  # fmt: skip
            raise NotOnboarded(
                f"to: {notice.to_number!r} is not a fax number onboarded to this project; the fax was refused and "
                "nothing was stored. Onboard it first (POST /fax/v1/onboard).",
                expression=["to"],
            )
        return record

    async def earlier(self, carrier: str, notice: InboundNotice) -> Received | None:
        """What an earlier delivery of the same carrier fax stored, or None."""
        record = await self.records.find_one({"_id": f"{carrier}:{notice.carrier_fax_id}"})
        if record is None:
            return None
        communication = await self.store.read("Communication", record["communication_id"])
        task = await self.store.read("Task", record["task_id"]) if record.get("task_id") else None
        return Received(communication, task, duplicate=True)

    # -- reception -------------------------------------------------------------------------------------

    async def receive(
        self,
        carrier: str,
        notice: InboundNotice,
        media: InboundMedia | None,
        *,
        who: str,
        address: str | None = None,
        suggest_later: bool = False,
    ) -> Received:
        """Receive one fax (see the module's steps); DomainErrors say why nothing was stored.

        ``suggest_later``: the suggestions (OCR can take seconds a page) are made after the answer, so that a
        carrier's webhook is answered at once; otherwise the answer's Task already holds them.
        """
        number = await self.check_number(notice, carrier)
        found = await self.earlier(carrier, notice)
        if found is not None:
            return found
        fax_id = fax_id_of(carrier, notice.carrier_fax_id)
        moment = now()
        stored = None
        if notice.failure is None:
            if media is None:
                raise Unprocessable("The fax carried no document; nothing was stored.", expression=["media"])
            try:
                accepted = await accept(media.data, self.settings.max_pages)
            except DocumentProblem as problem:
                log.warning("%s fax %s refused: %s", carrier, notice.carrier_fax_id, problem)
                raise Unprocessable(f"document: {problem} Nothing was stored.", expression=["media"]) from None
            stored = await self.keep(fax_id, moment, accepted)
        communication = self.communication(fax_id, notice, number.get("owner"), stored, moment)
        communication_id = str(uuid.uuid4())
        owner = number.get("owner")
        task = None if stored is None else triage_task(communication_id, fax_id, notice, stored.info, owner)
        done = await self.record(carrier, notice, fax_id, communication_id, communication, task, stored, who, address)
        if stored is None or done.task is None or done.duplicate:
            return done
        if suggest_later:
            later = asyncio.create_task(self.suggest(done.task, stored.info.pdf, notice), name="fhir-fax-suggest")
            self._later.add(later)
            later.add_done_callback(self._later.discard)
            return done
        return Received(done.communication, await self.suggest(done.task, stored.info.pdf, notice), False)

    async def close(self) -> None:
        """Stop suggestions still being made (the faxes and Tasks are stored; only the proposals are lost)."""
        for task in list(self._later):
            task.cancel()
        if self._later:
            await asyncio.gather(*self._later, return_exceptions=True)

    async def suggest(self, task: dict[str, Any], pdf: bytes, notice: InboundNotice) -> dict[str, Any]:
        """Put the likely patients and sender on the Task (``suggestions.py``); best effort, after the write.

        The fax is received and its Task queued whatever happens here: a document that cannot be read, or
        OCR that is missing or slow, only means no suggestions.
        """
        try:
            ocr = self.settings.inbound_ocr and shutil.which("tesseract") is not None
            try:
                pages = await read_texts(pdf, ocr, self.settings.inbound_ocr_seconds)
            except DocumentProblem as problem:
                log.info("fax %s: its text could not be read (%s); no patient suggestions", task["id"], problem)
                pages = []
            found = await patient_suggestions(self.database, pages)
            found += await sender_suggestions(self.database, caller_number(notice.from_number))
            if not found:
                return task
            inputs = [suggestion.task_input() for suggestion in found]

            def change(current: dict[str, Any]) -> dict[str, Any] | None:
                return None if current.get("status") != "requested" else {**current, "input": inputs}

            return await self.store.modify("Task", task["id"], change) or task
        except Exception:  # suggestions must never cost a received fax
            stop_if_cancelled()
            log.exception("suggestions for Task/%s failed", task["id"])
            return task

    async def keep(self, fax_id: str, moment: datetime, accepted: AcceptedDocument) -> Stored:
        """Write the PDF, and the carrier's original when it was not that PDF, to the reception bucket."""
        name = f"{moment:%Y-%m-%d}-{fax_id}"  # the date first: keys sort, and list by prefix, by day
        bucket = self.settings.inbound_bucket
        pdf = Z3Location(bucket, f"{name}.pdf")
        metadata = {"receivedFax": fax_id}
        versions = [(await self.z3.put(pdf, accepted.pdf, PDF, metadata)).version]
        original = None
        if accepted.original is not None:
            extension = "tif" if accepted.original_type == "image/tiff" else "bin"
            original = Z3Location(bucket, f"{name}.original.{extension}")
            versions.append((await self.z3.put(original, accepted.original, accepted.original_type, metadata)).version)
        return Stored(pdf, accepted, original, tuple(versions))

    async def pin(self, stored: Stored, session: Any) -> None:
        """Pin the stored documents, as a sent fax's are, in the reception's transaction: a received fax is a
        record, so a later upload to its key or a delete of the key never removes it, and the SHA-1 its
        Communication shows (``contentAttachment.hash``) downloads it. A delivery that lost the race to record
        the same fax pins nothing, and discards its copy."""
        documents = [(stored.pdf, stored.info.pdf), (stored.original, stored.info.original)]
        for version, (location, data) in zip(stored.versions, documents, strict=False):
            if location is not None and data is not None:
                digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
                await self.z3.pin(version, location, digest, session=session)

    def url(self, location: Z3Location) -> str:
        if self.project_api_base:
            return f"{self.project_api_base.rstrip('/')}/z3/{location.bucket}/{location.key}"
        return str(location)

    def communication(
        self, fax_id: str, notice: InboundNotice, owner: str | None, stored: Stored | None, moment: datetime
    ) -> dict[str, Any]:
        """The Communication of a received fax (``inbound_shape``), naming its documents by this server's URLs."""
        if stored is None:
            return received_communication(fax_id, notice, owner, None, moment)
        original = self.url(stored.original) if stored.original is not None else None
        return received_communication(
            fax_id, notice, owner, Documents(self.url(stored.pdf), stored.info, original), moment
        )

    async def record(
        self,
        carrier: str,
        notice: InboundNotice,
        fax_id: str,
        communication_id: str,
        communication: dict[str, Any],
        task: dict[str, Any] | None,
        stored: Stored | None,
        who: str,
        address: str | None,
    ) -> Received:
        """The reception record, the Communication, the Task and the AuditEvent, in one transaction."""
        moment = now()
        task_id = str(uuid.uuid4()) if task is not None else None
        record: dict[str, Any] = {
            "_id": f"{carrier}:{notice.carrier_fax_id}",
            "carrier": carrier,
            "fax_id": fax_id,
            "communication_id": communication_id,
            "task_id": task_id,
            "to": notice.to_number,
            "received": moment,
            "documents": [] if stored is None else [str(s) for s in (stored.pdf, stored.original) if s is not None],
            "repaired": REPAIRED,  # written as ``inbound_repair`` would leave it
        }

        async def write(session: Any) -> Received:
            await self.records.insert_one(record, session=session)
            if stored is not None:
                await self.pin(stored, session)
            saved = await self.store.create(communication, resource_id=communication_id, moment=moment, session=session)
            saved_task = None
            if task is not None:
                saved_task = await self.store.create(task, resource_id=task_id, moment=moment, session=session)
            event = audit_event(
                subtype=(FAX_EVENTS, "fax-received"), action="C", outcome=SUCCESS, who=who, address=address,
                entities=[f"Communication/{communication_id}"] + ([f"Task/{task_id}"] if task_id else []),
                description=f"A fax from {notice.from_number[:20]} to {notice.to_number} was received "
                f"({'stopped' if stored is None else 'completed'}).",
            )  # fmt: skip
            await self.store.create(event, moment=moment, session=session, validated=True)
            return Received(saved, saved_task, duplicate=False)

        try:
            return await in_transaction(self.database.client, write)
        except DuplicateKeyError:
            found = await self.earlier(carrier, notice)  # a concurrent delivery of the same fax won
            if found is None:
                raise
            for version in stored.versions if stored is not None else ():
                await self.z3.discard(version)  # its own copy of the same document stays
            return found
        except PyMongoError:
            raise ReceptionUnavailable(
                "The received fax could not be recorded (the database did not take the write); nothing was stored. "
                "Deliver it again."
            ) from None
