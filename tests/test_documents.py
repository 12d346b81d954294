"""Documents: what is refused at send time, and the fax-line rendering read back and checked."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pypdf
import pytest
from PIL import Image

from fhir_fax.fax.documents import DocumentProblem, inspect
from fhir_fax.fax.render import FAX_WIDTH, render_fax
from fhir_fax.fax.worker import create_worker
from fhir_fax.settings import Settings
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import FIXTURES, SEED_SENDER, serving, stored_counts

LETTER = (FIXTURES / "referral-letter.pdf").read_bytes()


def pdf_with_pages(sizes: list[tuple[float, float]]) -> bytes:
    writer = pypdf.PdfWriter()
    for width, height in sizes:
        writer.add_blank_page(width=width, height=height)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def encrypted_letter() -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(LETTER)))
    writer.encrypt("secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def image_bytes(kind: str, frames: int = 1) -> bytes:
    pages = [Image.new("L", (850, 1100), 255) for _ in range(frames)]
    out = io.BytesIO()
    pages[0].save(out, format=kind, save_all=frames > 1, append_images=pages[1:])
    return out.getvalue()


def pdf_from_objects(objects: list[bytes]) -> bytes:
    """A well-formed PDF (with a correct xref table) from raw object bodies; object 1 is the catalog."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


ZERO_PAGES = pdf_from_objects([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])

REFUSED = [
    ("text", b"Dear Dr. Chen, please see the attached.", "not a PDF, TIFF, PNG or JPEG"),
    ("html named .pdf", b"<html><body>referral</body></html>", "judged by its content, not its name"),
    ("encrypted PDF", encrypted_letter(), "encrypted (password-protected)"),
    ("corrupt PDF", LETTER[:700], "damaged and cannot be opened"),
    ("zero pages", ZERO_PAGES, "has no pages"),
    ("too many pages", pdf_with_pages([(612, 792)] * 4), "has 4 pages; at most 3"),
    ("broken image", image_bytes("PNG")[:60], "image is damaged"),
    (
        "page that cannot be rendered",
        pdf_from_objects(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100000000 100000000] >>",
            ]
        ),
        "Page 1 cannot be rendered: it is 100000000 x 100000000 points",
    ),
]


@pytest.mark.parametrize(("case", "data", "message"), REFUSED, ids=[c[0] for c in REFUSED])
async def test_documents_a_fax_machine_cannot_receive_are_refused_at_send_time(
    fax_settings: Settings, database: Any, case: str, data: bytes, message: str
) -> None:
    async with serving(fax_settings.model_copy(update={"max_pages": 3, "worker_enabled": False}), database) as api:
        await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        await Z3Store(database).put(Z3Location("letters", "referral.pdf"), data, "application/pdf")
        body = {
            "media": "z3://letters/referral.pdf",
            "quality": "fine",
            "recipientNumber": "+16175550143",
            "sender": SEED_SENDER,
        }
        response = await api.post("/fax/v1/send", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith("media: z3://letters/referral.pdf cannot be faxed: ")
    assert message in response.json()["message"]
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}


async def test_a_replaced_document_is_inspected_again(fax_settings: Settings, database: Any) -> None:
    """What inspecting an upload found is remembered per upload: a new upload at the same key is new."""
    location = Z3Location("letters", "referral.pdf")
    body = {"media": "z3://letters/referral.pdf", "quality": "fine", "recipientNumber": "+16175550143",
            "sender": SEED_SENDER}  # fmt: skip
    async with serving(fax_settings.model_copy(update={"worker_enabled": False}), database) as api:
        await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        await Z3Store(database).put(location, LETTER, "application/pdf")
        first = await api.post("/fax/v1/send", json=body)
        assert first.status_code == 200, first.text
        await Z3Store(database).put(location, encrypted_letter(), "application/pdf")
        refused = await api.post("/fax/v1/send", json=body)
        assert refused.status_code == 422
        assert "encrypted" in refused.json()["message"]
        await Z3Store(database).put(location, pdf_with_pages([(612, 792)] * 2), "application/pdf")
        again = await api.post("/fax/v1/send", json=body)
        assert again.status_code == 200, again.text
    pages = [c["payload"][0]["contentAttachment"]["extension"][0]["valueInteger"]
             for c in (first.json()["communicationResource"], again.json()["communicationResource"])]  # fmt: skip
    assert pages == [3, 2]  # the referral letter has 3 pages, its replacement 2
    assert (await stored_counts(database))["Communication"] == 2


@pytest.mark.parametrize(("kind", "frames"), [("TIFF", 2), ("PNG", 1), ("JPEG", 1)])
def test_images_are_accepted_with_their_page_count(kind: str, frames: int) -> None:
    info = inspect(image_bytes(kind, frames), 350)
    assert (info.content_type, info.pages) == (f"image/{kind.lower()}", frames)


def test_the_attachment_hash_is_base64_sha1() -> None:
    import base64
    import hashlib

    assert inspect(LETTER, 350).sha1 == base64.b64encode(hashlib.sha1(LETTER).digest()).decode()


@pytest.mark.parametrize(("quality", "dpi"), [("standard", 98), ("fine", 196), ("superfine", 391)])
def test_rendered_tiffs_are_fax_line_pages(quality: str, dpi: int) -> None:
    source = pdf_with_pages([(612, 792), (595, 842), (792, 612), (612, 1008)])  # letter, A4, landscape, legal
    with Image.open(io.BytesIO(render_fax(source, quality))) as tiff:
        assert tiff.n_frames == 4
        for index in range(4):
            tiff.seek(index)
            assert tiff.width == FAX_WIDTH
            assert tiff.mode == "1"
            assert tiff.info["compression"] == "group4"
            assert tuple(round(v) for v in tiff.info["dpi"]) == (204, dpi)
            inches_high = tiff.height / dpi
            assert 10 < inches_high <= 14.05, "upright pages of letter, A4 or legal length"
        tiff.seek(2)
        assert tiff.height > tiff.width * dpi / 204, "the landscape page was turned upright"


def test_other_page_sizes_are_scaled_to_fit() -> None:
    tall = pdf_with_pages([(612, 3000)])  # a receipt-like page 41 inches long
    with Image.open(io.BytesIO(render_fax(tall, "fine"))) as tiff:
        assert tiff.width == FAX_WIDTH
        assert tiff.height / 196 <= 14.05


def test_a_document_that_cannot_render_is_a_document_problem() -> None:
    with pytest.raises(DocumentProblem):
        render_fax(LETTER[:700], "fine")


async def test_the_worker_renders_beside_the_original_and_preview_shows_the_page(
    fax_settings: Settings, database: Any, tmp_path: Path
) -> None:
    settings = fax_settings.model_copy(update={"worker_enabled": False, "simulator_speed": 1000.0})
    async with serving(settings, database) as api:
        await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        await Z3Store(database).put(Z3Location("letters", "referral.pdf"), LETTER, "application/pdf")
        body = {
            "media": "z3://letters/referral.pdf",
            "quality": "fine",
            "recipientNumber": "+16175550143",
            "sender": SEED_SENDER,
        }
        communication = (await api.post("/fax/v1/send", json=body)).json()["communicationResource"]
        attachment = communication["payload"][0]["contentAttachment"]
        assert attachment["hash"] == inspect(LETTER, 350).sha1 and attachment["size"] == len(LETTER)
        assert attachment["extension"] == [{"url": "https://extensions.fhir.oystehr.com/fax-pages", "valueInteger": 3}]
        await create_worker(settings, database).step()
        job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
        assert job["rendered"] == "z3://letters/referral.pdf.fine.fax.tif"
        rendered = await Z3Store(database).read(Z3Location("letters", "referral.pdf.fine.fax.tif"))
        with Image.open(io.BytesIO(rendered)) as tiff:
            assert (tiff.n_frames, tiff.width) == (3, FAX_WIDTH)
        page = await api.get(f"/fax/v1/faxes/{communication['id']}/preview", params={"page": "2"})
        assert page.status_code == 200 and page.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(page.content)) as png:
            assert png.width == FAX_WIDTH and 2100 < png.height < 2300, "square pixels, as on paper"
        beyond = await api.get(f"/fax/v1/faxes/{communication['id']}/preview", params={"page": "4"})
        assert beyond.status_code == 404 and "has 3 pages" in beyond.json()["message"]
        bad = await api.get(f"/fax/v1/faxes/{communication['id']}/preview", params={"page": "first"})
        assert bad.status_code == 400
        unknown = await api.get("/fax/v1/faxes/nope/preview", params={"page": "1"})
        assert unknown.status_code == 404


@pytest.mark.parametrize(("kind", "size"), [("PNG", (850, 1100)), ("JPEG", (2550, 3300)), ("PNG", (1100, 850))])
def test_images_keep_their_shape_on_the_fax_page(kind: str, size: tuple[int, int]) -> None:
    """An image fills the page's width and keeps its aspect ratio, whatever its pixel count (11 inches here)."""
    out = io.BytesIO()
    Image.new("L", size, 255).save(out, format=kind)
    with Image.open(io.BytesIO(render_fax(out.getvalue(), "fine"))) as tiff:
        assert tiff.width == FAX_WIDTH
        assert 10.9 < tiff.height / 196 < 11.1, "letter-shaped, upright"
