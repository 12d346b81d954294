"""Fax rendering: any accepted document becomes what a fax line carries.

Pages are exactly 1728 pixels wide (A4 and letter), 204 dpi across and 98 (standard), 196 (fine)
or 391 (superfine) lines per inch down, 1 bit deep, landscape pages turned upright, other sizes
scaled to fit, written as one multi-page TIFF with CCITT Group 4 compression (TIFF Class F).

A PDF page is drawn at the size it is faxed at (its short side across 8.5 inches, at most 14 inches
long, at the quality's resolution), never bigger, and only after its size passed the pixel budget; an
image's size is checked from its header before it is decoded. Run it through ``documents.run_pdfium``,
which runs it in the document sandbox (another process, with memory and time limits).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from PIL import Image, TiffImagePlugin

from ..z3.locations import Z3Location
from .documents import (
    FAX_WIDTH,
    HORIZONTAL_DPI,
    VERTICAL_DPI,
    check_image_size,
    check_page_size,
    open_image,
    open_pdf,
    sniff_type,
)

__all__ = [
    "FAX_WIDTH",
    "HORIZONTAL_DPI",
    "VERTICAL_DPI",
    "join_tiffs",
    "preview_png",
    "render_fax",
    "tiff_pages",
    "tiff_to_pdf",
]

MAX_PAGE_INCHES = 14.0  # legal length; longer pages are scaled down to fit
THRESHOLD = 160  # grey level below which a pixel is printed black


def render_scale(width: float, height: float, quality: str) -> float:
    """Pixels per point that draw a page at the size it is faxed at: no bigger than the fax needs."""
    short, long = sorted((width, height))
    inches_per_point = FAX_WIDTH / HORIZONTAL_DPI / short  # the short side goes across the page
    inches_per_point = min(inches_per_point, MAX_PAGE_INCHES / long)  # and the page is at most legal length
    return inches_per_point * max(HORIZONTAL_DPI, VERTICAL_DPI[quality])


def _pdf_pages(data: bytes, quality: str) -> Iterator[Image.Image]:
    document = open_pdf(data)
    try:
        for index in range(len(document)):
            width, height = document.get_page_size(index)
            check_page_size(index, width, height, quality)
            page = document[index]
            bitmap = page.render(scale=render_scale(width, height, quality), grayscale=True)
            image = bitmap.to_pil()
            bitmap.close()
            page.close()
            yield image
    finally:
        document.close()


def _image_pages(data: bytes, quality: str) -> Iterator[Image.Image]:
    with open_image(data) as image:
        for frame in range(getattr(image, "n_frames", 1)):
            image.seek(frame)
            check_image_size(frame, image.width, image.height)
            yield image.convert("L")


def fax_page(image: Image.Image, quality: str) -> Image.Image:
    """One page as the recipient gets it: upright, 1728 wide, the quality's vertical resolution, 1 bit."""
    if image.width > image.height:
        image = image.rotate(90, expand=True)
    vertical = VERTICAL_DPI[quality]
    inches_high = image.height / image.width * (FAX_WIDTH / HORIZONTAL_DPI)  # its width fills the page
    scale = min(1.0, MAX_PAGE_INCHES / inches_high)
    width = round(FAX_WIDTH * scale)
    height = max(1, round(inches_high * scale * vertical))
    resized = image.convert("L").resize((width, height), Image.Resampling.LANCZOS)
    page = Image.new("L", (FAX_WIDTH, height), 255)
    page.paste(resized, ((FAX_WIDTH - width) // 2, 0))
    return page.point(lambda value: 255 if value >= THRESHOLD else 0).convert("1")


def render_fax(data: bytes, quality: str) -> bytes:
    """The whole document as a multi-page TIFF Class F (Group 4), written one page at a time.

    Pages are rendered, converted and appended one by one, so memory stays that of one page
    whatever the length of the document.
    """
    pages_of = _pdf_pages if sniff_type(data) == "application/pdf" else _image_pages
    output = io.BytesIO()
    dpi = (HORIZONTAL_DPI, VERTICAL_DPI[quality])
    with TiffImagePlugin.AppendingTiffWriter(output, new=True) as tiff:
        for image in pages_of(data, quality):
            page = fax_page(image, quality)
            image.close()
            page.save(tiff, format="TIFF", compression="group4", dpi=dpi)
            tiff.newFrame()
            page.close()
    return output.getvalue()


def join_tiffs(parts: list[bytes]) -> bytes:
    """Fax-line renderings (ours: TIFF Class F made by ``render_fax``) as one TIFF, pages in order.

    Only for renderings this server made (of a cover it drew, or of documents rendered in the sandbox), so it
    runs in the server, off the event loop; each page is decoded and written again one at a time.
    """
    output = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(output, new=True) as tiff:
        for part in parts:
            with Image.open(io.BytesIO(part)) as image:
                for frame in range(getattr(image, "n_frames", 1)):
                    image.seek(frame)
                    dpi = image.info.get("dpi", (HORIZONTAL_DPI, HORIZONTAL_DPI))
                    image.save(tiff, format="TIFF", compression="group4", dpi=dpi)
                    tiff.newFrame()
    return output.getvalue()


def tiff_to_pdf(tiff: bytes) -> bytes:
    """One of our fax-line renderings as a PDF for carriers that take PDF only: each page a 1-bit image (CCITT
    Group 4, as in the TIFF) at the page's resolution, so it prints at the size it is faxed at."""
    output = io.BytesIO()
    with Image.open(io.BytesIO(tiff)) as image:
        dpi = image.info.get("dpi", (HORIZONTAL_DPI, HORIZONTAL_DPI))
        image.save(output, format="PDF", save_all=True, dpi=dpi)
    return output.getvalue()


def preview_png(tiff: bytes, page_number: int) -> bytes:
    """One page of a rendered fax as PNG, stretched back to square pixels as it looks on paper."""
    with Image.open(io.BytesIO(tiff)) as image:
        image.seek(page_number - 1)
        x_dpi, y_dpi = image.info.get("dpi", (HORIZONTAL_DPI, HORIZONTAL_DPI))
        page = image.convert("L")
        height = round(page.height * float(x_dpi) / float(y_dpi))
        output = io.BytesIO()
        page.resize((page.width, height)).save(output, format="PNG")
        return output.getvalue()


def tiff_pages(tiff: bytes) -> int:
    with Image.open(io.BytesIO(tiff)) as image:
        return getattr(image, "n_frames", 1)


def rendering_location(original: Z3Location, quality: str) -> Z3Location:
    """Where the rendering of ``original`` at ``quality`` is kept: beside it, e.g. ``letter.pdf.fine.fax.tif``."""
    return Z3Location(original.bucket, f"{original.key}.{quality}.fax.tif")
