"""``GET /fax/v1/faxes/{communication-id}/preview?page=N``: a page as the recipient will see it (PNG).

A packet (a cover sheet and/or several documents) shows its pages in the order they are faxed: the cover
(page 1), then each document. The page comes from the version the send pinned (the same bytes the worker
faxes), never from whatever the key holds now, and its rendering is found by that version, never by name.

A received fax (no job, a reception record) shows the pages of the PDF the reception stored.

A preview shows the document, so the route lets the access gate judge the Communication (read, patient
compartment) and ``check_document`` judge the document (``Z3:GetObject``) before anything is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import Invalid, NotFound, Unprocessable
from ..fhir.inputs import ascii_int
from ..z3.locations import Z3Location, parse_z3_url
from ..z3.store import Z3Store
from .documents import DocumentProblem, run_pdfium
from .inbound import COLLECTION as INBOUND
from .media import job_documents, pinned_document
from .operation import SendFaxRequest
from .outbox import Outbox
from .packet import Packet, PacketRenderer, documents_of
from .render import preview_png, render_fax, rendering_location, tiff_pages
from .send import Caller, FaxService

RECEIVED_QUALITY = "fine"  # how a received fax's pages are shown (its PDF holds the carrier's resolution)


async def preview(
    database: Any,
    communication_id: str,
    page: str | None,
    check_document: Callable[[Z3Location], Awaitable[None]],
    communication: dict[str, Any] | None = None,
) -> bytes:
    number = ascii_int(page)
    if number is None or number < 1:
        raise Invalid("page must be a page number from 1 up, e.g. ?page=1.", expression=["page"])
    job = await Outbox(database).for_communication(communication_id)
    if job is None:
        return await received_page(database, communication or {"id": communication_id}, number, check_document)
    z3 = Z3Store(database)
    if job.documents is not None or job.cover is not None:  # a packet: its cover, then each document
        for pinned in job_documents(job):
            await check_document(parse_z3_url(pinned.media, ()))
        return await packet_page(PacketRenderer(z3), Packet.of(job), number)
    await check_document(parse_z3_url(job.media, ()))
    source = job.media_version
    if source is not None:
        tiff = await z3.read_rendering(source, job.quality)
    else:  # a job queued before versions were pinned
        tiff = await z3.read(rendering_location(parse_z3_url(job.media, ()), job.quality))
    if tiff is None:
        try:
            document = await pinned_document(z3, job)
        except DocumentProblem as problem:
            raise Unprocessable(f"There is nothing to preview: {problem}") from None
        try:
            tiff = await run_pdfium(render_fax, document, job.quality)
        except DocumentProblem as problem:
            raise Unprocessable(str(problem)) from None
        target = rendering_location(parse_z3_url(job.media, ()), job.quality)
        await z3.put_rendering(target, source, job.quality, tiff)
    pages = await run_pdfium(tiff_pages, tiff)
    if number > pages:
        raise NotFound(f"The fax has {pages} pages; ask for page 1 to {pages}.", expression=["page"])
    return await run_pdfium(preview_png, tiff, number)


def received_hash(communication: dict[str, Any], location: Z3Location) -> str | None:
    """The SHA-1 the received fax's Communication gives for the document at ``location`` (its payload)."""
    name = f"{location.bucket}/{location.key}"
    for item in communication.get("payload") or []:
        attachment = (item or {}).get("contentAttachment") or {}
        if str(attachment.get("url") or "").endswith(name) and attachment.get("hash"):
            return str(attachment["hash"])
    return None


async def received_page(
    database: Any,
    communication: dict[str, Any],
    number: int,
    check_document: Callable[[Z3Location], Awaitable[None]],
) -> bytes:
    """A page of a received fax: its stored PDF (the reception's first document), at fine resolution.

    Staff triage a received fax by its pages before filing it, so the preview serves both directions. The page
    comes from the version the reception pinned (the SHA-1 its Communication names), never from whatever the key
    holds now; the rendering is kept beside the PDF, found by the version it renders, as a sent fax's is.
    """
    communication_id = communication["id"]
    record = await database[INBOUND].find_one({"communication_id": communication_id}, {"documents": 1})
    if record is None or not record.get("documents"):
        raise NotFound(f"There is no fax for Communication/{communication_id}.")
    location = parse_z3_url(record["documents"][0], ())
    await check_document(location)
    z3 = Z3Store(database)
    sha1 = received_hash(communication, location)
    version = None if sha1 is None else await z3.pinned_version(location, sha1)
    if version is None:
        raise Unprocessable(f"There is nothing to preview: the document received at {location} is not kept.")
    tiff = await z3.read_rendering(version, RECEIVED_QUALITY)
    if tiff is None:
        document = await z3.read_version(version)
        if document is None:
            raise Unprocessable(f"There is nothing to preview: the document received at {location} is not kept.")
        try:
            tiff = await run_pdfium(render_fax, document, RECEIVED_QUALITY)
        except DocumentProblem as problem:
            raise Unprocessable(str(problem)) from None
        await z3.put_rendering(rendering_location(location, RECEIVED_QUALITY), version, RECEIVED_QUALITY, tiff)
    pages = await run_pdfium(tiff_pages, tiff)
    if number > pages:
        raise NotFound(f"The fax has {pages} pages; ask for page 1 to {pages}.", expression=["page"])
    return await run_pdfium(preview_png, tiff, number)


async def packet_page(renderer: PacketRenderer, packet: Packet, number: int) -> bytes:
    """Page ``number`` of a packet as PNG: 404 naming the page count past the last page."""
    try:
        image, _pages = await renderer.page(packet, number)
    except IndexError as past:
        pages = past.args[0]
        raise NotFound(f"The fax has {pages} pages; ask for page 1 to {pages}.", expression=["page"]) from None
    except DocumentProblem as problem:
        raise Unprocessable(f"There is nothing to preview: {problem}") from None
    return image


@dataclass(frozen=True)
class DryRun:
    """One page of the fax a request would send (PNG), its page count, and the documents it showed."""

    image: bytes
    pages: int
    documents: tuple[tuple[Z3Location, Any], ...]  # (location, version): for the audit of what was shown


async def dry_run(service: FaxService, request: SendFaxRequest, caller: Caller, page: int) -> DryRun:
    """Page ``page`` of the fax ``request`` would send, as PNG, and its page count; nothing is stored.

    Every check of a send runs (access, references, numbers, each document, the limits), then the cover and
    the documents are rendered in memory: nothing is pinned, no rendering is kept, no Communication or job is
    written. The page count is the one the send would record and fax.
    """
    if page < 1:
        raise Invalid("page must be a page number from 1 up.", expression=["page"])
    checked = await service.check_request(request, caller)
    prepared = await service.prepare(checked, caller)
    urls = [str(location) for location in checked.documents]
    packet = Packet(request.quality, prepared.cover, documents_of(urls, prepared.found.documents))
    image = await packet_page(PacketRenderer(service.z3, keep=False), packet, page)
    shown = tuple(
        (location, info.version) for location, info in zip(checked.documents, prepared.found.documents, strict=True)
    )
    return DryRun(image, prepared.pages, shown)
