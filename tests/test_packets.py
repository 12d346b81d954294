"""Fax packets: a cover sheet drawn from FHIR data and several documents in one fax, their limits, the dry run.

The worker is driven by hand here (``worker.step``) with a carrier that records what it was handed, so the
test reads the exact TIFF the fax line would carry; delivery through the simulator is in test_resend.py.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pypdf
import pypdfium2
import pytest
from PIL import Image
from test_frozen_documents import recording_worker

from fhir_fax.fax.cover import CoverSheet, cover_pdf
from fhir_fax.fax.document_faxes import carriers_of
from fhir_fax.fax.render import preview_png, render_fax
from fhir_fax.fax.terminology import PAGES_EXTENSION
from fhir_fax.settings import Settings
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import SEED_RECIPIENT, SEED_SENDER, SENDER_NUMBER, as_parameters, serving, stored_counts

PATIENT = "Patient/maria-lopez"
SENDER_NAME = "Riverside Family Medicine - Referrals Desk"
RECIPIENT_NAME = "Dr. Amelia Chen"
RECIPIENT_FAX = "+16175550143"


def pdf_with_pages(count: int, padding: int = 0) -> bytes:
    """A PDF of ``count`` letter pages; ``padding`` bytes of metadata make it bigger without adding pages."""
    writer = pypdf.PdfWriter()
    for _ in range(count):
        writer.add_blank_page(width=612, height=792)
    if padding:
        writer.add_metadata({"/Title": "x" * padding})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def frames(tiff: bytes) -> list[bytes]:
    """Every page of a TIFF as raw 1-bit pixels (to compare pages by what they show)."""
    pages = []
    with Image.open(io.BytesIO(tiff)) as image:
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            pages.append(image.convert("1").tobytes())
    return pages


def pdf_text(pdf: bytes) -> tuple[int, str]:
    document = pypdfium2.PdfDocument(pdf)
    try:
        return len(document), "".join(document[i].get_textpage().get_text_range() for i in range(len(document)))
    finally:
        document.close()


def pages_extension(communication: dict[str, Any]) -> Any:
    return next((e["valueInteger"] for e in communication["extension"] if e["url"] == PAGES_EXTENSION), None)


@pytest.fixture
def packet_settings(fax_settings: Settings) -> Settings:
    return fax_settings.model_copy(
        update={"worker_enabled": False, "max_pages": 10, "max_fax_bytes": 20_000, "simulator_speed": 1000.0}
    )


@pytest.fixture
async def app(packet_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(packet_settings, database) as http:
        assert (await http.post("/fax/v1/onboard", json={"faxNumber": SENDER_NUMBER})).status_code == 200
        yield http


async def put(database: Any, data: bytes) -> str:
    """A new document under a key of its own; its z3:// URL."""
    key = f"packets/{uuid.uuid4().hex}.pdf"
    await Z3Store(database).put(Z3Location("my-bucket", key), data, "application/pdf")
    return f"z3://my-bucket/{key}"


def packet_request(media: list[str] | str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "media": media,
        "quality": "fine",
        "recipient": SEED_RECIPIENT,
        "sender": SEED_SENDER,
        "patient": PATIENT,
        "coverPage": True,
        "coverNote": "Referral for cardiology review; records attached.",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


async def test_a_cover_and_two_documents_are_faxed_as_one_tiff_cover_first(
    app: httpx.AsyncClient, packet_settings: Settings, database: Any
) -> None:
    first, second = await put(database, pdf_with_pages(2)), await put(database, pdf_with_pages(3))
    response = await app.post("/fax/v1/send", json=packet_request([first, second]))
    assert response.status_code == 200, response.text
    communication = response.json()["communicationResource"]
    assert [p["contentAttachment"]["url"] for p in communication["payload"]] == [first, second]
    assert [p["contentAttachment"]["extension"][0]["valueInteger"] for p in communication["payload"]] == [2, 3]
    assert pages_extension(communication) == 6, "cover + 2 + 3"

    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    assert [d["media"] for d in job["documents"]] == [first, second]
    for document in job["documents"]:
        assert await Z3Store(database).version_info(document["version"]) is not None
    pinned = await database["z3.files"].count_documents(
        {"_id": {"$in": [d["version"] for d in job["documents"]]}, "metadata.pinned": True}
    )
    assert pinned == 2, "each document is frozen at send"
    for document in job["documents"]:  # the access gate's document rule knows this fax carries each one
        assert communication["id"] in await carriers_of(database)(document["media"], document["version"])

    worker, carrier = recording_worker(packet_settings, database)
    assert await worker.step() is True
    [submission] = carrier.submissions
    pages = frames(submission.document)
    assert submission.pages == len(pages) == 6
    sheet = CoverSheet.of(job["cover"])
    cover = cover_pdf(sheet)
    assert pages[0] == frames(render_fax(cover, "fine"))[0], "page 1 is the cover"
    assert pages[1:3] == frames(render_fax(pdf_with_pages(2), "fine"))
    count, text = pdf_text(cover)
    assert count == 1
    for shown in (
        SENDER_NAME,
        SENDER_NUMBER,
        "+12223334440",
        RECIPIENT_NAME,
        RECIPIENT_FAX,
        "6 (including this cover)",
    ):
        assert shown in text
    assert "CONFIDENTIALITY NOTICE" in text and "Referral for cardiology review" in text
    assert "Lopez" not in text and "Maria" not in text and "Lopez" not in str(job["cover"]), "no patient by default"

    rendered = (await database.fax_jobs.find_one({"_id": job["_id"]}))["rendered"]
    assert communication["id"] in await carriers_of(database)(rendered), "the packet's rendering is this fax's"
    packet = await Z3Store(database).read_rendering(f"packet:{job['_id']}", "fine")
    assert packet == submission.document, "kept where a carrier that fetches by URL downloads it"
    stored = (await app.get(f"/fhir/Communication/{communication['id']}")).json()
    assert pages_extension(stored) == 6, "the total stays on every later version"
    preview = await app.get(f"/fax/v1/faxes/{communication['id']}/preview", params={"page": "1"})
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert preview.content == preview_png(render_fax(cover, "fine"), 1), "the preview of a sent fax shows its cover"
    beyond = await app.get(f"/fax/v1/faxes/{communication['id']}/preview", params={"page": "7"})
    assert beyond.status_code == 404 and "has 6 pages" in beyond.json()["message"]


async def test_a_carrier_that_takes_pdf_gets_the_packet_as_a_pdf_of_the_same_pages(
    app: httpx.AsyncClient, packet_settings: Settings, database: Any
) -> None:
    urls = [await put(database, pdf_with_pages(1)), await put(database, pdf_with_pages(2))]
    response = await app.post("/fax/v1/send", json=packet_request(urls, quality="standard"))
    assert response.status_code == 200, response.text
    job = await database.fax_jobs.find_one({"communication_id": response.json()["communicationResource"]["id"]})
    worker, carrier = recording_worker(packet_settings, database, takes_tiff=False)
    assert await worker.step() is True
    [submission] = carrier.submissions
    assert submission.content_type == "application/pdf" and submission.pages == 4
    document = pypdfium2.PdfDocument(submission.document)
    try:
        assert len(document) == 4
        width, height = document.get_page_size(0)
        assert abs(width - 612) < 4 and abs(height - 792) < 4, "letter size, as faxed"
    finally:
        document.close()
    kept = await database["z3.files"].find_one({"metadata.renderingOf": f"packet:{job['_id']}"})
    assert submission.media_version == str(kept["_id"]), "a carrier fetching by URL gets exactly this version"
    assert submission.media.endswith(".standard.fax.pdf")


async def test_documents_repeat_in_parameters_and_a_cover_may_name_the_patient_when_allowed(
    packet_settings: Settings, database: Any
) -> None:
    async with serving(packet_settings.model_copy(update={"cover_patient_name": True}), database) as api:
        assert (await api.post("/fax/v1/onboard", json={"faxNumber": SENDER_NUMBER})).status_code == 200
        first, second = await put(database, pdf_with_pages(1)), await put(database, pdf_with_pages(1))
        body = as_parameters(packet_request(first, coverNote=None, coverPage=None))
        body["parameter"].insert(1, {"name": "media", "valueUrl": second})
        body["parameter"].append({"name": "coverPage", "valueBoolean": True})
        response = await api.post("/fhir/Communication/$send-fax", json=body)
        assert response.status_code == 200, response.text
        communication = response.json()
    assert [p["contentAttachment"]["url"] for p in communication["payload"]] == [first, second]
    assert pages_extension(communication) == 3
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    _, text = pdf_text(cover_pdf(CoverSheet.of(job["cover"])))
    assert "Maria Elena Lopez" in text


OVER_THE_PAGE_LIMIT = [
    ([11], "media: z3://my-bucket/", "cannot be faxed: The document has 11 pages; at most 10"),
    ([1, 11], "media[2]: z3://my-bucket/", "cannot be faxed: The document has 11 pages; at most 10"),
    ([6, 4], "media: the fax would have 11 pages (cover sheet: 1; z3://my-bucket/", ": 4); at most 10 pages"),
    ([10], "media: the fax would have 11 pages (cover sheet: 1; z3://my-bucket/", "without a cover sheet"),
]


async def test_a_fax_over_the_page_limit_is_refused_naming_the_figures(app: httpx.AsyncClient, database: Any) -> None:
    before = await stored_counts(database)
    pinned = await database["z3.files"].count_documents({"metadata.pinned": True})
    for documents, start, figure in OVER_THE_PAGE_LIMIT:
        urls = [await put(database, pdf_with_pages(count)) for count in documents]
        response = await app.post("/fax/v1/send", json=packet_request(urls))
        assert response.status_code == 422, response.text
        message = response.json()["message"]
        assert message.startswith(start) and figure in message and urls[-1] in message, message
    assert await stored_counts(database) == before
    assert await database["z3.files"].count_documents({"metadata.pinned": True}) == pinned, "nothing pinned"


async def test_documents_over_the_byte_limit_together_are_refused_naming_the_sizes(
    app: httpx.AsyncClient, database: Any
) -> None:
    first, second = pdf_with_pages(1, padding=12_000), pdf_with_pages(1, padding=12_000)
    urls = [await put(database, first), await put(database, second)]
    before = await stored_counts(database)
    response = await app.post("/fax/v1/send", json=packet_request(urls, coverPage=False, coverNote=None))
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert f"come to {len(first) + len(second):,} bytes" in message and "at most 20,000 bytes" in message
    assert f"{urls[1]}: {len(second):,}" in message
    assert await stored_counts(database) == before


async def test_the_dry_run_shows_what_would_be_sent_and_stores_nothing(app: httpx.AsyncClient, database: Any) -> None:
    urls = [await put(database, pdf_with_pages(2)), await put(database, pdf_with_pages(1))]
    before = await stored_counts(database)
    files = await database["z3.files"].count_documents({})
    pinned = await database["z3.files"].count_documents({"metadata.pinned": True})

    body = as_parameters(packet_request(urls[0], coverNote=None, coverPage=None))
    body["parameter"] += [
        {"name": "media", "valueUrl": urls[1]},
        {"name": "coverPage", "valueBoolean": True},
        {"name": "page", "valuePositiveInt": 2},
    ]
    response = await app.post("/fhir/Communication/$preview-fax", json=body)
    assert response.status_code == 200, response.text
    out = {p["name"]: p for p in response.json()["parameter"]}
    assert out["pages"]["valueInteger"] == 4 and out["image"]["valueAttachment"]["title"] == "Page 2 of 4"
    image = base64.b64decode(out["image"]["valueAttachment"]["data"])
    assert image.startswith(b"\x89PNG")

    sdk = await app.post("/fax/v1/preview", json={**packet_request(urls), "page": 1})
    assert sdk.status_code == 200 and sdk.headers["content-type"] == "image/png"
    assert sdk.headers["fax-pages"] == "4"
    beyond = await app.post("/fax/v1/preview", json={**packet_request(urls), "page": 5})
    assert beyond.status_code == 404 and "has 4 pages" in beyond.json()["message"]
    refused = await app.post("/fax/v1/preview", json=packet_request(urls, recipient="Practitioner/nobody"))
    assert refused.status_code == 422 and "recipient" in refused.json()["message"]

    assert await stored_counts(database) == before, "no Communication, job or idempotency record"
    assert await database["z3.files"].count_documents({}) == files, "no rendering kept"
    assert await database["z3.files"].count_documents({"metadata.pinned": True}) == pinned, "nothing pinned"

    sent = await app.post("/fax/v1/send", json=packet_request(urls))
    assert sent.status_code == 200
    communication = sent.json()["communicationResource"]
    assert pages_extension(communication) == 4, "the page count previewed is the page count sent"
    after = await app.get(f"/fax/v1/faxes/{communication['id']}/preview", params={"page": "2"})
    assert after.status_code == 200 and after.content == image, "the first document's first page, as previewed"


HOSTILE = {
    "very long": "word " * 100,
    "one long word": "x" * 500,
    "control characters": "line one\x00\x07\x1b[31m red\r\nline two\x0c\x7f\u0085end",
    "right to left": "\u202eevil\u202c \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \u2066isolate\u2069",
    "markup": "<script>alert(1)</script> <b>bold</b> **strong** {{ sender }} %PDF-1.4 \\n",
    "many lines": "\n" * 250,
}


@pytest.mark.parametrize("note", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_notes_draw_one_safe_page(note: str) -> None:
    sheet = CoverSheet(
        sender_name=SENDER_NAME * 20,
        sender_fax=SENDER_NUMBER,
        recipient_fax=RECIPIENT_FAX,
        sent="2026-11-30T09:30:00.000Z",
        pages=3,
        notice="CONFIDENTIALITY NOTICE " * 200,
        recipient_name="\u202e" + RECIPIENT_NAME * 30,
        note=note,
    )
    count, text = pdf_text(cover_pdf(sheet))
    assert count == 1
    assert not any(ord(c) < 32 and c not in "\r\n" for c in text), "no control characters drawn"
    assert not any(c in text for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\x7f\x85")
    assert "3 (including this cover)" in text and "CONFIDENTIALITY NOTICE" in text
    if "script" in note:
        assert "<script>alert(1)</script>" in text, "markup is printed as text, not interpreted"


async def test_hostile_notes_pass_the_dry_run_and_an_over_long_one_is_refused(
    app: httpx.AsyncClient, database: Any
) -> None:
    url = await put(database, pdf_with_pages(1))
    for note in HOSTILE.values():
        response = await app.post("/fax/v1/preview", json=packet_request([url], coverNote=note))
        assert response.status_code == 200, response.text
        assert response.headers["fax-pages"] == "2"
    before = await stored_counts(database)
    response = await app.post("/fax/v1/send", json=packet_request([url], coverNote="n" * 501))
    assert response.status_code == 400
    assert "coverNote is 501 characters long; at most 500" in response.json()["message"]
    contradicting = await app.post("/fax/v1/send", json=packet_request([url], coverPage=False))
    assert contradicting.status_code == 400 and "coverPage is false" in contradicting.json()["message"]
    assert await stored_counts(database) == before


async def test_more_documents_than_a_fax_takes_are_refused(app: httpx.AsyncClient, database: Any) -> None:
    before = await stored_counts(database)
    response = await app.post("/fax/v1/send", json=packet_request([f"z3://my-bucket/{n}.pdf" for n in range(21)]))
    assert response.status_code == 400
    assert response.json()["message"] == "Parameter 'media' may appear only 20 times."
    missing = await app.post("/fax/v1/send", json=packet_request(["z3://my-bucket/packets/none.pdf"]))
    assert missing.status_code == 422 and "There is no Z3 object at z3://my-bucket/packets/none.pdf" in missing.text
    assert await stored_counts(database) == before
