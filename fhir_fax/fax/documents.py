"""What a fax document is: its type by content (never by name), its pages, and whether it can be faxed.

PDFium is not thread-safe, so every PDFium call runs on one dedicated thread (``run_pdfium``): off
the event loop, so a large document never stalls the API, and never two at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import pypdfium2
from PIL import Image

T = TypeVar("T")
PDFIUM = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdfium")
PDFIUM_PASSWORD_ERROR = 4
MAX_PAGE_POINTS = 14_400  # 200 inches: the largest page PDF allows without UserUnit
CHECK_PIXELS = 64  # the render check draws each page this big on its longer side
# PDFium refuses to open a PDF whose page tree is empty, and its error code is a global "last error"
# that may be stale, so an empty page tree is recognised from the file itself.
EMPTY_PAGE_TREE = re.compile(rb"/Type\s*/Pages\b[^>]*/Count\s+0\b|/Count\s+0\b[^>]*/Type\s*/Pages\b")
A_PAGE = re.compile(rb"/Type\s*/Page\b(?!s)")


async def run_pdfium(function: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(PDFIUM, function, *args)


class DocumentProblem(ValueError):
    """The document cannot be faxed (the message says why and what to do)."""


@dataclass(frozen=True)
class DocumentInfo:
    content_type: str
    pages: int
    size: int
    sha1: str  # base64 of the SHA-1 digest, as FHIR's Attachment.hash wants


def sniff_type(data: bytes) -> str | None:
    """The media type, judged from the first bytes."""
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def open_pdf(data: bytes) -> pypdfium2.PdfDocument:
    try:
        return pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as error:
        code = getattr(error, "err_code", None)
        if code == PDFIUM_PASSWORD_ERROR:
            raise DocumentProblem("The PDF is encrypted (password-protected); send it without a password.") from None
        if EMPTY_PAGE_TREE.search(data) and not A_PAGE.search(data):
            raise DocumentProblem("The document has no pages.") from None
        raise DocumentProblem("The PDF is damaged and cannot be opened; export it again and re-upload it.") from None


def inspect(data: bytes, max_pages: int) -> DocumentInfo:
    """Check that a fax machine could receive ``data``; raises DocumentProblem with the reason."""
    kind = sniff_type(data)
    if kind is None:
        raise DocumentProblem(
            "The document is not a PDF, TIFF, PNG or JPEG (judged by its content, not its name); convert it to PDF."
        )
    pages = _check_pdf(data) if kind == "application/pdf" else _check_image(data)
    if pages == 0:
        raise DocumentProblem("The document has no pages.")
    if pages > max_pages:
        raise DocumentProblem(f"The document has {pages} pages; at most {max_pages} can be faxed at once.")
    sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()
    return DocumentInfo(kind, pages, len(data), sha1)


def _check_pdf(data: bytes) -> int:
    document = open_pdf(data)
    try:
        for index in range(len(document)):
            page = document[index]
            try:
                width, height = page.get_size()
                if not (0 < width <= MAX_PAGE_POINTS and 0 < height <= MAX_PAGE_POINTS):
                    raise DocumentProblem(
                        f"Page {index + 1} cannot be rendered: it is {width:.0f} x {height:.0f} points, outside "
                        f"what a PDF page may be (up to {MAX_PAGE_POINTS} points a side)."
                    )
                page.render(scale=CHECK_PIXELS / max(width, height)).close()
            except (pypdfium2.PdfiumError, MemoryError):
                raise DocumentProblem(f"Page {index + 1} cannot be rendered.") from None
            finally:
                page.close()
        return len(document)
    finally:
        document.close()


def _check_image(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = getattr(image, "n_frames", 1)
            for frame in range(frames):
                image.seek(frame)
                image.load()
            return frames
    except (OSError, ValueError):
        raise DocumentProblem("The image is damaged and cannot be read; export it again and re-upload it.") from None


def count_pages(data: bytes) -> int:
    """Pages of an already accepted document."""
    if sniff_type(data) == "application/pdf":
        document = open_pdf(data)
        try:
            return len(document)
        finally:
            document.close()
    with Image.open(io.BytesIO(data)) as image:
        return getattr(image, "n_frames", 1)
