"""What a fax document is: its type by content (never by name), its pages, and whether it can be faxed.

Everything here parses untrusted bytes, so it is bounded before any work is done: the page count is read
(and refused over the limit) before any page is loaded, each page's size is checked against the pixel budget
before it is drawn, and an image's dimensions are read from its header before it is decoded. On top of that,
``run_pdfium`` runs these functions in a child process with memory and time limits (see ``sandbox``), so a
document that gets past every check still cannot take the server down.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pypdfium2
import pypdfium2.raw as pdfium_c
from PIL import Image

T = TypeVar("T")
PDFIUM_PASSWORD_ERROR = 4
MAX_PAGE_POINTS = 14_400  # 200 inches: the largest page PDF allows without UserUnit
CHECK_PIXELS = 64  # the render check draws each page this big on its longer side
# Fax geometry: pages are 1728 pixels across (204 dpi), 98, 196 or 391 lines per inch down.
FAX_WIDTH = 1728
HORIZONTAL_DPI = 204
VERTICAL_DPI = {"standard": 98, "fine": 196, "superfine": 391}
FINEST = "superfine"
PAGE_PIXELS = 40_000_000  # the pixel budget of one page (FHIR_FAX_MAX_PAGE_PIXELS; set in the sandbox)
# PDFium refuses to open a PDF whose page tree is empty, and its error code is a global "last error"
# that may be stale, so an empty page tree is recognised from the file itself.
EMPTY_PAGE_TREE = re.compile(rb"/Type\s*/Pages\b[^>]*/Count\s+0\b|/Count\s+0\b[^>]*/Type\s*/Pages\b")
A_PAGE = re.compile(rb"/Type\s*/Page\b(?!s)")
# A document is one thing. HTML markup or a PDF inside another format makes a polyglot: a file that is
# something else to another program (a browser, a PDF reader) than what was checked and faxed.
MARKUP = re.compile(rb"<(?:html|script|iframe|svg|!doctype\s+html)[\s>/]", re.IGNORECASE)
PDF_SIGNATURE = b"%PDF-"


async def run_pdfium(function: Callable[..., T], data: bytes, *args: Any) -> T:
    """``function(data, *args)`` in the document sandbox: another process, with memory and time limits."""
    from . import sandbox

    result: T = await sandbox.run(function, data, *args)
    return result


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
    """Check that a fax machine could receive ``data``; raises DocumentProblem with the reason.

    Pages are counted (and refused over ``max_pages``) before any is loaded, and each is checked against
    the pixel budget at the finest quality, so a document accepted here can be rendered at any quality.
    """
    kind = sniff_type(data)
    if kind is None:
        raise DocumentProblem(
            "The document is not a PDF, TIFF, PNG or JPEG (judged by its content, not its name); convert it to PDF."
        )
    refuse_polyglot(data, kind)
    pages = _check_pdf(data, max_pages) if kind == "application/pdf" else _check_image(data, max_pages)
    sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()
    return DocumentInfo(kind, pages, len(data), sha1)


def refuse_polyglot(data: bytes, kind: str) -> None:
    """A document that is also HTML, or an image that also holds a PDF, is refused."""
    if MARKUP.search(data):
        raise DocumentProblem(
            "The document also contains HTML (a polyglot file: it would be a web page to a browser); "
            "export it again from the program that made it."
        )
    if kind != "application/pdf" and PDF_SIGNATURE in data:
        raise DocumentProblem(
            "The image also contains a PDF (a polyglot file: it would be another document to a PDF reader); "
            "export the image again, or send the PDF itself."
        )


def check_page_count(pages: int, max_pages: int) -> None:
    if pages == 0:
        raise DocumentProblem("The document has no pages.")
    if pages > max_pages:
        raise DocumentProblem(f"The document has {pages} pages; at most {max_pages} can be faxed at once.")


def page_pixels(width: float, height: float, quality: str) -> int:
    """Pixels of a ``width`` x ``height`` page faxed at ``quality`` at its full length (short side across)."""
    short, long = sorted((width, height))
    return FAX_WIDTH * math.ceil(long / short * FAX_WIDTH / HORIZONTAL_DPI * VERTICAL_DPI[quality])


def check_page_size(index: int, width: float, height: float, quality: str) -> None:
    """Refuse a page (before it is drawn) that is no PDF page, or over the pixel budget at ``quality``."""
    if not (0 < width <= MAX_PAGE_POINTS and 0 < height <= MAX_PAGE_POINTS):
        raise DocumentProblem(
            f"Page {index + 1} cannot be rendered: it is {width:.0f} x {height:.0f} points, outside "
            f"what a PDF page may be (up to {MAX_PAGE_POINTS} points a side)."
        )
    pixels = page_pixels(width, height, quality)
    if pixels > PAGE_PIXELS:
        raise DocumentProblem(
            f"Page {index + 1} is {width / 72:.3g} x {height / 72:.3g} inches: faxed at {quality} quality it would be "
            f"{pixels / 1e6:,.0f} million pixels, over the {PAGE_PIXELS / 1e6:,.0f} million a page may have; "
            "send pages shaped like letter or A4 paper."
        )


def check_image_size(index: int, width: int, height: int) -> None:
    """Refuse an image page whose decoded size (read from its header) is over the pixel budget."""
    if width * height > PAGE_PIXELS:
        raise DocumentProblem(
            f"Page {index + 1} is an image of {width} x {height} pixels ({width * height / 1e6:,.0f} million), over "
            f"the {PAGE_PIXELS / 1e6:,.0f} million a page may have; scan or export it at 300 dpi or less."
        )


def _check_pdf(data: bytes, max_pages: int) -> int:
    document = open_pdf(data)
    try:
        if pdfium_c.FPDF_GetSecurityHandlerRevision(document.raw) != -1:
            raise DocumentProblem(
                "The PDF is encrypted (password-protected, if only against printing or copying: an owner "
                "password); save it without a password or encryption and send it again."
            )
        pages = len(document)
        check_page_count(pages, max_pages)
        for index in range(pages):
            width, height = document.get_page_size(index)
            check_page_size(index, width, height, FINEST)
            try:
                page = document[index]
            except pypdfium2.PdfiumError:
                raise DocumentProblem(f"Page {index + 1} cannot be rendered.") from None
            try:
                page.render(scale=CHECK_PIXELS / max(width, height)).close()
            except (pypdfium2.PdfiumError, MemoryError):
                raise DocumentProblem(f"Page {index + 1} cannot be rendered.") from None
            finally:
                page.close()
        return pages
    finally:
        document.close()


def open_image(data: bytes) -> Image.Image:
    """The image with only its header read; DocumentProblem if it is damaged or a decompression bomb."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise DocumentProblem(
            f"The image is larger than the {PAGE_PIXELS / 1e6:,.0f} million pixels a page may have; "
            "scan or export it at 300 dpi or less."
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise DocumentProblem("The image is damaged and cannot be read; export it again and re-upload it.") from None


def _check_image(data: bytes, max_pages: int) -> int:
    with open_image(data) as image:
        try:
            frames = getattr(image, "n_frames", 1)
            check_page_count(frames, max_pages)
            for frame in range(frames):
                image.seek(frame)
                check_image_size(frame, image.width, image.height)
                image.load()
            return frames
        except DocumentProblem:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            raise DocumentProblem(
                "The image is damaged and cannot be read; export it again and re-upload it."
            ) from None


def count_pages(data: bytes) -> int:
    """Pages of an already accepted document."""
    if sniff_type(data) == "application/pdf":
        document = open_pdf(data)
        try:
            return len(document)
        finally:
            document.close()
    with open_image(data) as image:
        return getattr(image, "n_frames", 1)
