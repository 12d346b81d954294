"""Hostile documents: each one is a clear 422 at send time (or a stopped fax), and nothing is stored or queued.

Every document here is made by the test: pages too thin, too big or too many; pixel bombs in PNG, JPEG and
TIFF; encrypted PDFs (user password, owner password only); damaged files; polyglots; a PDF that takes for ever
to draw. The send-time check and the rendering run in the document sandbox (another process with memory and
time limits); the last tests show that the server keeps working after the sandbox gave up on a document.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import struct
import subprocess
import sys
import zlib
from typing import Any

import pypdf
import pytest
from PIL import Image
from test_documents import LETTER, encrypted_letter, image_bytes, pdf_from_objects, pdf_with_pages

from fhir_fax.fax import sandbox
from fhir_fax.fax.documents import DocumentProblem, count_pages, run_pdfium
from fhir_fax.fax.render import render_fax
from fhir_fax.fax.worker import create_worker
from fhir_fax.settings import Settings
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import SEED_SENDER, as_parameters, serving, stored_counts

LOCATION = Z3Location("letters", "hostile.pdf")
SEND = {"media": "z3://letters/hostile.pdf", "quality": "fine", "recipientNumber": "+16175550143",
        "sender": SEED_SENDER}  # fmt: skip


# --- builders --------------------------------------------------------------------------------------------


def many_pages(count: int) -> bytes:
    """``count`` pages, the first of which is too big to draw (so a check that drew before counting would say so)."""
    kids = " ".join(f"{number} 0 R" for number in range(3, count + 3))
    pages = [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 20000 20000] >>"]
    pages += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"] * (count - 1)
    return pdf_from_objects(
        [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(), *pages]
    )


def nested_forms(depth: int = 12, fanout: int = 10) -> bytes:
    """1.7 KB that draws a square fanout**depth times: form 1 draws form 2 ten times, which draws form 3..."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /X 5 0 R >> >> "
        b"/Contents 4 0 R >>",
        b"<< /Length 5 >>\nstream\n/X Do\nendstream",
    ]
    for level in range(depth):
        last = level == depth - 1
        body = b"0 0 1 1 re f" if last else b" ".join([b"/Y Do"] * fanout)
        resources = b"" if last else b"/Resources << /XObject << /Y %d 0 R >> >> " % (6 + level)
        objects.append(
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] " + resources
            + b"/Length %d >>\nstream\n" % len(body) + body + b"\nendstream"
        )  # fmt: skip
    return pdf_from_objects(objects)


def owner_password_only() -> bytes:
    """Opens without a password (the owner password only restricts printing and copying)."""
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(LETTER)))
    writer.encrypt(user_password="", owner_password="owner-secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` grey pixels, with a few rows of data: a pixel bomb."""
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is changed to claim ``width`` x ``height``."""
    data = bytearray(image_bytes("JPEG"))
    start = data.index(b"\xff\xc0")  # baseline frame: marker, length, precision, height, width
    data[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    """A small deflate-compressed TIFF whose ImageWidth and ImageLength tags are changed."""
    out = io.BytesIO()
    Image.new("L", (16, 16), 255).save(out, format="TIFF", compression="tiff_adobe_deflate")
    data = bytearray(out.getvalue())
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + entry * 12
        tag, kind = struct.unpack_from("<HH", data, at)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<H" if kind == 3 else "<I", data, at + 8, value)
    return bytes(data)


def truncated_jpeg() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((400, 400), 64).save(out, format="JPEG")
    return out.getvalue()[: out.tell() // 2]


def big_image_png(side: int) -> bytes:
    """A real ``side`` x ``side`` RGB PNG (compresses to little; decodes to side*side*3 bytes)."""
    out = io.BytesIO()
    Image.new("RGB", (side, side), (255, 255, 255)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


HTML = b"<html><body><script>alert(document.cookie)</script></body></html>"


def many_page_tiff(pages: int) -> bytes:
    """Letter-size 1-bit pages, Group 4 compressed: hundreds of pages in a few kilobytes (as a fax machine sends)."""
    frames = [Image.new("1", (850, 1100), 1) for _ in range(pages)]
    out = io.BytesIO()
    frames[0].save(out, format="TIFF", compression="group4", save_all=True, append_images=frames[1:])
    return out.getvalue()


HOSTILE = [
    # pages
    ("thin page 72 x 14400 pt", pdf_with_pages([(72, 14400)]),
     "Page 1 is 1 x 200 inches: faxed at superfine quality it would be"),
    ("narrower page 10 x 14400 pt", pdf_with_pages([(10, 14400)]), "million a page may have"),
    ("thin page among letters", pdf_with_pages([(612, 792), (612, 792), (100, 14400)]), "Page 3 is 1.39 x 200 inches"),
    ("huge page", pdf_from_objects([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
     b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14401 20000] >>"]), "outside what a PDF page may be"),
    ("20000 pages", many_pages(20_000), "has 20000 pages; at most 350 can be faxed at once"),
    ("400-page TIFF", many_page_tiff(400), "has 400 pages; at most 350"),
    # pixel bombs
    ("PNG over the pixel budget", png_header_only(7000, 7000),
     "image of 7000 x 7000 pixels (49 million), over the 40 million a page may have"),
    ("PNG decompression bomb", png_header_only(100_000, 100_000), "larger than the 40 million pixels"),
    ("JPEG pixel bomb", jpeg_claiming(60_000, 60_000), "larger than the 40 million pixels"),
    ("TIFF pixel bomb", tiff_claiming(60_000, 60_000), "larger than the 40 million pixels"),
    ("TIFF over the pixel budget", tiff_claiming(8000, 6000), "image of 8000 x 6000 pixels (48 million)"),
    # encrypted
    ("encrypted with a user password", encrypted_letter(), "The PDF is encrypted (password-protected"),
    ("encrypted with an owner password only", owner_password_only(), "an owner password"),
    # damaged
    ("truncated PDF", LETTER[:700], "damaged and cannot be opened"),
    ("PDF header then noise", b"%PDF-1.7\n" + bytes(range(256)) * 40, "damaged and cannot be opened"),
    ("truncated PNG", image_bytes("PNG")[:60], "image is damaged"),
    ("truncated JPEG", truncated_jpeg(), "image is damaged"),
    # polyglots
    ("PDF with HTML appended", LETTER + HTML, "also contains HTML"),
    ("HTML with a PDF inside", HTML + LETTER, "not a PDF, TIFF, PNG or JPEG"),
    ("PNG with a PDF appended", image_bytes("PNG") + LETTER, "also contains a PDF"),
    ("JPEG with HTML appended", image_bytes("JPEG") + HTML, "also contains HTML"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "data", "message"), HOSTILE, ids=[case[0] for case in HOSTILE])
async def test_a_hostile_document_is_refused_at_send_time(
    fax_settings: Settings, database: Any, case: str, data: bytes, message: str
) -> None:
    async with serving(fax_settings.model_copy(update={"worker_enabled": False}), database) as api:
        await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        await Z3Store(database).put(LOCATION, data, "application/pdf")
        response = await api.post("/fax/v1/send", json=SEND)
        operation = await api.post("/fhir/Communication/$send-fax", json=as_parameters(SEND),
                                   headers={"content-type": "application/fhir+json"})  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(f"media: {LOCATION} cannot be faxed: ")
    assert message in response.json()["message"]
    assert operation.status_code == 422, operation.text
    issue = operation.json()["issue"][0]
    assert message in issue["diagnostics"] and "media" in issue["diagnostics"]
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}
    assert [o["key"] for o in await Z3Store(database).list_objects("letters", "")] == [LOCATION.key], "no rendering"


async def send_document(api: Any, database: Any, data: bytes, key: str = "hostile.pdf") -> Any:
    await Z3Store(database).put(Z3Location("letters", key), data, "application/pdf")
    return await api.post("/fax/v1/send", json={**SEND, "media": f"z3://letters/{key}"})


async def test_a_document_that_takes_for_ever_to_draw_is_stopped_at_the_time_limit(
    fax_settings: Settings, database: Any
) -> None:
    """10**12 squares in 1.7 KB: the sandbox is killed at the time limit, and the next document is checked.

    PDFium's memory grows while it draws this (about 0.5 GB a second here), so the memory limit is set far
    above what it can reach in one second: the time limit, not the memory limit, is what stops it.
    """
    limits = {"document_check_seconds": 1.0, "document_memory_bytes": 6 << 30}
    settings = fax_settings.model_copy(update={"worker_enabled": False, **limits})
    async with serving(settings, database) as api:
        await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        refused = await send_document(api, database, nested_forms())
        assert refused.status_code == 422, refused.text
        assert "took longer than the 1 s allowed for checking a document" in refused.json()["message"]
        assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}
        accepted = await send_document(api, database, LETTER, "letter.pdf")
        assert accepted.status_code == 200, accepted.text


async def test_a_document_that_needs_too_much_memory_is_refused_and_the_next_one_is_checked(
    fax_settings: Settings, database: Any
) -> None:
    """A 6000 x 6000 RGB image is under the pixel budget but decodes to 108 MB, over a 128 MB sandbox."""
    settings = fax_settings.model_copy(update={"worker_enabled": False, "document_memory_bytes": 128 << 20})
    async with serving(settings, database) as api:
        await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        refused = await send_document(api, database, big_image_png(6000))
        assert refused.status_code == 422, refused.text
        assert "more than the 128 MB of memory a document may use" in refused.json()["message"]
        assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}
        accepted = await send_document(api, database, LETTER, "letter.pdf")
        assert accepted.status_code == 200, accepted.text


async def test_a_hostile_document_that_reaches_the_worker_stops_the_fax_with_a_reason(
    fax_settings: Settings, database: Any
) -> None:
    """Accepted under a lax budget, rendered under the default one: the fax stops; it is never stuck."""
    lax = fax_settings.model_copy(update={"worker_enabled": False, "max_page_pixels": 1_000_000_000})
    async with serving(lax, database) as api:
        await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        sent = await send_document(api, database, pdf_with_pages([(144, 14400)]))
        assert sent.status_code == 200, sent.text
    communication_id = sent.json()["communicationResource"]["id"]
    strict = fax_settings.model_copy(update={"worker_enabled": False})
    async with serving(strict, database) as api:
        assert await create_worker(strict, database).step()
        final = (await api.get(f"/fhir/Communication/{communication_id}")).json()
        preview = await api.get(f"/fax/v1/faxes/{communication_id}/preview", params={"page": "1"})
    assert final["status"] == "stopped"
    assert "Page 1 is 2 x 200 inches: faxed at fine quality" in final["statusReason"]["text"]
    job = await database.fax_jobs.find_one({"communication_id": communication_id})
    assert job["state"] == "done" and "rendered" not in job
    assert preview.status_code == 422 and "Page 1 is 2 x 200 inches" in preview.json()["message"]
    assert await Z3Store(database).stat(Z3Location("letters", "hostile.pdf.fine.fax.tif")) is None


async def test_a_sandbox_that_dies_mid_call_is_a_clear_refusal_and_is_replaced() -> None:
    """As if the kernel's OOM killer took the child: the call is refused with a reason, the next one works."""
    sandbox.configure(sandbox.Limits(render_seconds=120))  # fresh children with limits of their own
    try:
        drawing = asyncio.create_task(run_pdfium(render_fax, nested_forms(), "fine"))
        for _ in range(3000):  # until the child that draws it has started (the guard: 30 s)
            if (pid := sandbox.sandbox_for("render_fax").pid()) is not None:
                break
            await asyncio.sleep(0.01)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(DocumentProblem, match=r"the process reading it stopped \(signal SIGKILL\)"):
            await drawing
        assert await run_pdfium(count_pages, LETTER) == 3
        assert sandbox.sandbox_for("render_fax").pid() not in (None, pid)
    finally:
        sandbox.configure(sandbox.Limits())


async def test_only_document_functions_run_in_the_sandbox() -> None:
    with pytest.raises(ValueError, match="is not a document call"):
        await run_pdfium(os.getcwd, b"")  # type: ignore[arg-type]


async def test_a_sandbox_that_stops_reading_its_input_is_stopped_at_the_time_limit() -> None:
    """A child gone astray that never reads: the write of a large document must not block for ever."""
    stuck = sandbox.Sandbox("check", sandbox.Limits(), seconds=1.0)

    def never_reads() -> Any:
        stuck._process = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        return stuck._process

    stuck._running = never_reads  # type: ignore[method-assign]
    try:
        with pytest.raises(DocumentProblem, match="took longer than the 1 s allowed for checking"):
            await stuck.call("inspect", b"%PDF-1.4 " + b"x" * (4 << 20), 350)
        assert stuck.pid() is None, "the child that stopped reading was killed"
    finally:
        stuck.close()
