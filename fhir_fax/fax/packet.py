"""A fax packet as the line carries it: the cover sheet (if any), then each pinned document, in order.

One plan serves the worker (the whole packet as one TIFF), the preview of a sent fax and the dry run (one page,
found by where it falls in the plan), so the page count a preview shows is the page count faxed.

Each document is rendered in the sandbox from the version the send pinned, and (outside a dry run) kept as the
rendering of that version, as for a one-document fax. The cover is drawn from what the job froze
(``cover.CoverSheet``) and rendered by the sandbox like any PDF.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..z3.locations import Z3Location, parse_z3_url
from ..z3.store import Z3Store
from .cover import CoverSheet, cover_pdf_async
from .documents import DocumentProblem, count_pages, run_pdfium
from .jobs import Job
from .media import PinnedDocument, job_documents, pinned_bytes
from .render import join_tiffs, preview_png, render_fax, rendering_location, tiff_pages, tiff_to_pdf
from .transports.base import Submission


@dataclass(frozen=True)
class Packet:
    """What one fax carries, in order; ``quality`` is the fax's."""

    quality: str
    cover: CoverSheet | None
    documents: tuple[PinnedDocument, ...]

    @classmethod
    def of(cls, job: Job) -> Packet:
        cover = None if job.cover is None else CoverSheet.of(dict(job.cover))
        return cls(job.quality, cover, tuple(job_documents(job)))

    @property
    def pages(self) -> int | None:
        """Pages of the whole fax, cover included; None when a document's count is not recorded (old jobs)."""
        counts = [d.pages for d in self.documents]
        if any(not count for count in counts):
            return None
        return sum(c or 0 for c in counts) + (1 if self.cover is not None else 0)


def packet_location(job: Job, extension: str = "tif") -> Z3Location:
    """Where a packet's rendering is kept: beside its first document, named by the fax (never read by name)."""
    first = parse_z3_url(job_documents(job)[0].media, ())
    return Z3Location(first.bucket, f"{first.key}.{job.id}.{job.quality}.fax.{extension}")


def packet_source(job: Job) -> str:
    """What the packet's rendering is the rendering of (``renderingOf``): this fax."""
    return f"packet:{job.id}"


class PacketRenderer:
    """Renders a packet's parts; ``keep``: store document renderings for reuse (never in a dry run)."""

    def __init__(self, z3: Z3Store, *, keep: bool = True) -> None:
        self.z3 = z3
        self.keep = keep

    async def cover(self, sheet: CoverSheet, quality: str) -> bytes:
        try:
            return await run_pdfium(render_fax, await cover_pdf_async(sheet), quality)
        except DocumentProblem as problem:  # our own page: should never happen, but never a 500
            reason = f"Document generation error: the cover sheet could not be rendered ({problem})."
            raise DocumentProblem(reason) from None

    async def document(self, document: PinnedDocument, quality: str) -> bytes:
        """The fax-line rendering of one pinned document (found by its version, made once when kept)."""
        if document.version is not None:
            existing = await self.z3.read_rendering(document.version, quality)
            if existing is not None:
                return existing
        data = await pinned_bytes(self.z3, document)
        try:
            tiff = await run_pdfium(render_fax, data, quality)
        except DocumentProblem:
            raise
        except Exception as error:  # PDFium/Pillow failures on a document that passed the send-time checks
            raise DocumentProblem(
                f"Document generation error: {document.media} could not be rendered ({error})."
            ) from None
        if self.keep:
            target = rendering_location(parse_z3_url(document.media, ()), quality)
            await self.z3.put_rendering(target, document.version, quality, tiff)
        return tiff

    async def whole(self, packet: Packet) -> bytes:
        """Every page, cover first, as one TIFF Class F."""
        parts: list[bytes] = []
        if packet.cover is not None:
            parts.append(await self.cover(packet.cover, packet.quality))
        for document in packet.documents:
            parts.append(await self.document(document, packet.quality))
        return await asyncio.to_thread(join_tiffs, parts)

    async def page_count(self, packet: Packet) -> int:
        known = packet.pages
        if known is not None:
            return known
        total = 1 if packet.cover is not None else 0
        for document in packet.documents:
            total += await self.pages_of(document)
        return total

    async def pages_of(self, document: PinnedDocument) -> int:
        """A document's pages as recorded at send (counted again only for jobs from before that)."""
        if document.pages:
            return document.pages
        counted: int = await run_pdfium(count_pages, await pinned_bytes(self.z3, document))
        return counted

    async def page(self, packet: Packet, number: int) -> tuple[bytes, int]:
        """Page ``number`` (from 1) as PNG, and the packet's page count; IndexError when there is no such page."""
        total = await self.page_count(packet)
        if not 1 <= number <= total:
            raise IndexError(total)
        if packet.cover is not None:
            if number == 1:
                return await run_pdfium(preview_png, await self.cover(packet.cover, packet.quality), 1), total
            number -= 1
        for document in packet.documents:
            pages = await self.pages_of(document)
            if number <= pages:
                return await run_pdfium(preview_png, await self.document(document, packet.quality), number), total
            number -= pages
        raise IndexError(total)


def documents_of(urls: Sequence[str], infos: Sequence[Any]) -> tuple[PinnedDocument, ...]:
    """Checked documents (``media.MediaInfo``) as a packet lists them."""
    return tuple(
        PinnedDocument(url, info.version, info.sha1, info.size, info.pages, info.content_type)
        for url, info in zip(urls, infos, strict=True)
    )


async def packet_submission(z3: Z3Store, outbox: Any, job: Job, reference: str, takes_tiff: bool) -> Submission:
    """A packet's attempt as the carrier gets it: one document, cover first, kept in Z3 as this fax's rendering.

    A carrier that takes the fax-line rendering gets the TIFF; one that takes PDF only (Telnyx) gets the same
    pages as a PDF of 1-bit images (made from our own rendering, never from the documents themselves). It is
    kept (and recorded on the job, so the access gate knows it is this fax's) because a carrier that fetches by
    URL downloads it from there; each attempt makes it again from the pinned parts, whose renderings are reused.
    """
    packet = Packet.of(job)
    tiff = await PacketRenderer(z3).whole(packet)
    known = packet.pages
    pages: int = known if known is not None else await run_pdfium(tiff_pages, tiff)
    location = packet_location(job, "tif" if takes_tiff else "pdf")
    if takes_tiff:
        document, content_type = tiff, "image/tiff"
    else:
        document, content_type = await asyncio.to_thread(tiff_to_pdf, tiff), "application/pdf"
    metadata = {"renderingOf": packet_source(job), "quality": job.quality}
    stored = await z3.put(location, document, content_type, metadata)
    await outbox.record_rendering(job.id, str(location))
    return Submission(
        reference=reference,
        to_number=job.to_number,
        from_number=job.from_number,
        quality=job.quality,
        pages=pages,
        document=document,
        content_type=content_type,
        media=str(location),
        media_version=str(stored.version),
    )
