"""What a fax document is: its type by content (not by name) and its page count."""

from __future__ import annotations

import io

import pypdfium2
from PIL import Image


class DocumentProblem(ValueError):
    """The document cannot be faxed (the message says why)."""


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


def count_pages(data: bytes) -> int:
    """Pages in a PDF, TIFF, PNG or JPEG; DocumentProblem for anything else or a broken file."""
    kind = sniff_type(data)
    if kind == "application/pdf":
        try:
            document = pypdfium2.PdfDocument(data)
        except pypdfium2.PdfiumError as error:
            raise DocumentProblem(f"The PDF cannot be opened ({error}).") from None
        try:
            return len(document)
        finally:
            document.close()
    if kind in ("image/tiff", "image/png", "image/jpeg"):
        try:
            with Image.open(io.BytesIO(data)) as image:
                return getattr(image, "n_frames", 1)
        except OSError as error:
            raise DocumentProblem(f"The image cannot be read ({error}).") from None
    raise DocumentProblem("The document is not a PDF, TIFF, PNG or JPEG.")
