"""A received fax's document: TIFF pages become one PDF, and the text of each page is read for suggestions.

Everything here parses bytes a stranger faxed in, so it runs in the document sandbox (``documents.run_pdfium``:
another process, memory and time limits) after ``documents.inspect`` has bounded the page count and every
page's pixels. ``accept`` is the one entry point of the reception: it refuses what cannot be a fax document
and gives back the PDF to keep (the carrier's own PDF unchanged, or a TIFF made into a PDF).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from PIL import Image

from .documents import DocumentInfo, DocumentProblem, inspect, open_image, open_pdf, run_pdfium, sniff_type

PDF = "application/pdf"
TIFF = "image/tiff"
TEXT_DPI = 200  # pages are drawn this fine for OCR: a fax line's own resolution (fine: 204 x 196)
TEXT_LAYER_MIN = 40  # fewer letters than this on a page: treat it as scanned and OCR it


@dataclass(frozen=True)
class AcceptedDocument:
    """What the reception keeps: the PDF (with its facts), and the carrier's original when it was not that PDF."""

    pdf: bytes
    info: DocumentInfo
    original: bytes | None
    original_type: str | None


async def accept(data: bytes, max_pages: int) -> AcceptedDocument:
    """Check a received document and make it a PDF; DocumentProblem says why it cannot be kept."""
    if not data:
        raise DocumentProblem("The fax carried no document (0 bytes).")
    kind = sniff_type(data)
    if kind not in (PDF, TIFF):
        raise DocumentProblem("The received document is neither a PDF nor a TIFF (judged by its content).")
    original_info = await run_pdfium(inspect, data, max_pages)  # polyglots, page count, pixel budget
    if kind == PDF:
        return AcceptedDocument(data, original_info, None, None)
    pdf = await run_pdfium(tiff_to_pdf, data)
    info = await run_pdfium(inspect, pdf, max_pages)
    return AcceptedDocument(pdf, info, data, kind)


def tiff_to_pdf(data: bytes) -> bytes:
    """The TIFF's pages as one PDF, each page stretched back to square pixels (fax lines are 204 x 98 or 196 dpi)."""
    pages: list[Image.Image] = []
    with open_image(data) as image:
        for frame in range(getattr(image, "n_frames", 1)):
            image.seek(frame)
            x_dpi, y_dpi = (float(v) for v in image.info.get("dpi", (204, 196)))
            x_dpi, y_dpi = (x_dpi or 204.0), (y_dpi or x_dpi or 204.0)
            page = image.convert("L")
            height = max(1, round(page.height * x_dpi / y_dpi))
            pages.append(page.resize((page.width, height)).convert("1"))
            resolution = x_dpi
    if not pages:
        raise DocumentProblem("The document has no pages.")
    output = io.BytesIO()
    pages[0].save(output, format="PDF", save_all=True, append_images=pages[1:], resolution=resolution)
    for page in pages:
        page.close()
    return output.getvalue()


def page_texts(pdf: bytes, ocr: bool, ocr_seconds: float) -> bytes:
    """Each page's text as JSON (``[{"page", "text", "source"}]``): the text layer, or Tesseract's reading.

    A page whose text layer holds almost nothing is a scan; with ``ocr`` it is drawn at 300 dpi and read by
    Tesseract (``ocr_seconds`` for the whole document, shared by its pages).
    """
    import time

    document = open_pdf(pdf)
    found: list[dict[str, object]] = []
    deadline = time.monotonic() + ocr_seconds
    try:
        for index in range(len(document)):
            page = document[index]
            try:
                text_page = page.get_textpage()
                text = text_page.get_text_range()
                text_page.close()
                source = "text"
                if ocr and sum(c.isalnum() for c in text) < TEXT_LAYER_MIN and time.monotonic() < deadline:
                    bitmap = page.render(scale=TEXT_DPI / 72, grayscale=True)
                    image = bitmap.to_pil()
                    bitmap.close()
                    text, source = ocr_image(image, max(1.0, deadline - time.monotonic())), "ocr"
                    image.close()
            finally:
                page.close()
            found.append({"page": index + 1, "text": text, "source": source})
    finally:
        document.close()
    return json.dumps(found).encode()


def ocr_image(image: Image.Image, seconds: float) -> str:
    """Tesseract's reading of one page (English, automatic page segmentation); empty when it gives up.

    One thread (``OMP_THREAD_LIMIT``): on a busy server Tesseract's own threads cost more than they save, and
    no inverted-text pass (faxes are black on white).
    """
    import os

    import pytesseract

    os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # the sandbox child's environment, passed to Tesseract
    try:
        text: str = pytesseract.image_to_string(image, lang="eng", config="-c tessedit_do_invert=0", timeout=seconds)
    except RuntimeError:  # pytesseract's timeout
        return ""
    return text


async def read_texts(pdf: bytes, ocr: bool, ocr_seconds: float) -> list[dict[str, object]]:
    """``page_texts`` in the sandbox, decoded."""
    raw = await run_pdfium(page_texts, pdf, ocr, ocr_seconds)
    pages: list[dict[str, object]] = json.loads(raw)
    return pages
