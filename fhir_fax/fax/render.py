"""Fax rendering: any accepted document becomes what a fax line carries.

Pages are exactly 1728 pixels wide (A4 and letter), 204 dpi across and 98 (standard), 196 (fine)
or 391 (superfine) lines per inch down, 1 bit deep, landscape pages turned upright, other sizes
scaled to fit, written as one multi-page TIFF with CCITT Group 4 compression (TIFF Class F).
Run it through ``documents.run_pdfium``: PDFium must not be called from two threads at once.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from PIL import Image, TiffImagePlugin

from ..z3.locations import Z3Location
from .documents import open_pdf, sniff_type

FAX_WIDTH = 1728
HORIZONTAL_DPI = 204
VERTICAL_DPI = {"standard": 98, "fine": 196, "superfine": 391}
MAX_PAGE_INCHES = 14.0  # legal length; longer pages are scaled down to fit
THRESHOLD = 160  # grey level below which a pixel is printed black


def _pdf_pages(data: bytes) -> Iterator[Image.Image]:
    document = open_pdf(data)
    try:
        for index in range(len(document)):
            page = document[index]
            width, height = page.get_size()
            scale = FAX_WIDTH / min(width, height)  # fit the short side (after turning) to the fax width
            bitmap = page.render(scale=scale, grayscale=True)
            image = bitmap.to_pil()
            bitmap.close()
            page.close()
            yield image
    finally:
        document.close()


def _image_pages(data: bytes) -> Iterator[Image.Image]:
    with Image.open(io.BytesIO(data)) as image:
        for frame in range(getattr(image, "n_frames", 1)):
            image.seek(frame)
            yield image.convert("L")


def fax_page(image: Image.Image, quality: str) -> Image.Image:
    """One page as the recipient gets it: upright, 1728 wide, the quality's vertical resolution, 1 bit."""
    if image.width > image.height:
        image = image.rotate(90, expand=True)
    vertical = VERTICAL_DPI[quality]
    inches_wide = image.width / FAX_WIDTH * (FAX_WIDTH / HORIZONTAL_DPI)
    inches_high = image.height / image.width * inches_wide
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
        for image in pages_of(data):
            page = fax_page(image, quality)
            image.close()
            page.save(tiff, format="TIFF", compression="group4", dpi=dpi)
            tiff.newFrame()
            page.close()
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
