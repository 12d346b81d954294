"""Documents are frozen at send: the fax carries the exact upload that was checked, whatever happens to its key.

The attack these tests replay: send a 1-page letter, then replace the object at the same key (through a fresh
signed upload URL, or by reusing the old one) and let the worker run. The carrier must get the letter that was
checked, and the Communication's hash, size and pages must describe what was faxed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pypdf
import pytest
from PIL import Image

from fhir_fax.fax.render import render_fax
from fhir_fax.fax.transports.base import Capabilities, Submission
from fhir_fax.fax.worker import Worker, create_worker
from fhir_fax.settings import Settings
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import SEED_SENDER, SENDER_NUMBER, serving

KEY = "letters/referral.pdf"
LOCATION = Z3Location("letters", "referral.pdf")


def pdf_with_pages(count: int) -> bytes:
    writer = pypdf.PdfWriter()
    for _ in range(count):
        writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def png_bomb() -> bytes:
    """A 69-byte PNG that claims 100,000 x 100,000 pixels (Pillow refuses it as a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 1, 0, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 200))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


ONE_PAGE = pdf_with_pages(1)
REPLACEMENTS = [
    ("three pages", pdf_with_pages(3)),
    ("html", b"<html><body>not a fax</body></html>"),
    ("over the page limit", pdf_with_pages(5)),
    ("image bomb", png_bomb()),
]


def sha1(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def tiff_pages(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        return getattr(image, "n_frames", 1)


@dataclass
class Recording:
    """The configured carrier, with every submission it was handed kept for the test to read."""

    inner: Any
    takes_tiff: bool
    submissions: list[Submission] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def capabilities(self) -> Capabilities:
        """The carrier's own, except whether it takes the fax-line rendering (the test chooses)."""
        return replace(self.inner.capabilities, takes_tiff=self.takes_tiff)

    async def start(self, sink: Any) -> None:
        await self.inner.start(sink)

    async def stop(self) -> None:
        await self.inner.stop()

    async def submit(self, submission: Submission) -> str:
        self.submissions.append(submission)
        return await self.inner.submit(submission)

    async def find(self, *args: Any) -> str | None:
        return await self.inner.find(*args)

    async def poll(self, carrier_id: str) -> list[Any]:
        return await self.inner.poll(carrier_id)


def recording_worker(settings: Settings, database: Any, takes_tiff: bool = True) -> tuple[Worker, Recording]:
    worker = create_worker(settings, database)
    recording = Recording(worker.transport, takes_tiff)
    worker.transport = recording
    return worker, recording


@pytest.fixture
def frozen_settings(fax_settings: Settings) -> Settings:
    return fax_settings.model_copy(update={"worker_enabled": False, "max_pages": 3, "simulator_speed": 1000.0})


@pytest.fixture
async def app(frozen_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(frozen_settings, database) as http:
        assert (await http.post("/fax/v1/onboard", json={"faxNumber": SENDER_NUMBER})).status_code == 200
        yield http


async def signed(api: httpx.AsyncClient, action: str, key: str = KEY, **extra: str) -> str:
    response = await api.post(f"/v1/z3/{key}", json={"action": action, **extra})
    assert response.status_code == 200, response.text
    return response.json()["signedUrl"]


async def upload(api: httpx.AsyncClient, data: bytes, key: str = KEY) -> httpx.Response:
    response = await api.put(
        await signed(api, "upload", key), content=data, headers={"content-type": "application/pdf"}
    )
    assert response.status_code == 200, response.text
    return response


async def send(api: httpx.AsyncClient, quality: str = "fine") -> dict[str, Any]:
    body = {"media": f"z3://{KEY}", "quality": quality, "recipientNumber": "+16175550143", "sender": SEED_SENDER}
    response = await api.post("/fax/v1/send", json=body)
    assert response.status_code == 200, response.text
    return response.json()["communicationResource"]


async def letters(database: Any) -> int:
    """How many versions are stored under the test's bucket (the fixtures have their own)."""
    return await database["z3.files"].count_documents({"filename": {"$regex": "^letters/"}})


async def orphan_chunks(database: Any) -> int:
    files = set(await database["z3.files"].distinct("_id"))
    return len(set(await database["z3.chunks"].distinct("files_id")) - files)


def attachment(communication: dict[str, Any]) -> dict[str, Any]:
    return communication["payload"][0]["contentAttachment"]


@pytest.mark.parametrize(("case", "replacement"), REPLACEMENTS, ids=[c[0] for c in REPLACEMENTS])
async def test_replacing_the_key_after_the_send_does_not_change_the_fax(
    app: httpx.AsyncClient, frozen_settings: Settings, database: Any, case: str, replacement: bytes
) -> None:
    await upload(app, ONE_PAGE)
    communication = await send(app)
    assert (attachment(communication)["hash"], attachment(communication)["size"]) == (sha1(ONE_PAGE), len(ONE_PAGE))
    await upload(app, replacement)  # a fresh signed URL, as anyone allowed to upload there could get
    assert await Z3Store(database).read(LOCATION) == replacement, "the key now holds the replacement"

    worker, carrier = recording_worker(frozen_settings, database)
    assert await worker.step() is True
    [submission] = carrier.submissions
    assert submission.pages == 1
    assert tiff_pages(submission.document) == 1
    assert submission.document == render_fax(ONE_PAGE, "fine"), "the rendering of the letter that was checked"
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    assert job["state"] == "submitted"
    read_back = (await app.get(f"/fhir/Communication/{communication['id']}")).json()
    assert attachment(read_back)["hash"] == sha1(ONE_PAGE)
    assert attachment(read_back)["extension"][0]["valueInteger"] == 1
    beyond = await app.get(f"/fax/v1/faxes/{communication['id']}/preview", params={"page": "2"})
    assert beyond.status_code == 404 and "has 1 pages" in beyond.json()["message"]


async def test_a_carrier_that_takes_the_original_gets_the_checked_bytes(
    app: httpx.AsyncClient, frozen_settings: Settings, database: Any
) -> None:
    await upload(app, ONE_PAGE)
    communication = await send(app)
    await upload(app, pdf_with_pages(3))
    worker, carrier = recording_worker(frozen_settings, database, takes_tiff=False)
    assert await worker.step() is True
    [submission] = carrier.submissions
    assert (submission.document, submission.pages, submission.content_type) == (ONE_PAGE, 1, "application/pdf")
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    assert submission.media_version == str(job["media_version"]), "URL-fetching carriers get the pinned version"


async def test_the_preview_before_the_worker_shows_the_checked_document(app: httpx.AsyncClient, database: Any) -> None:
    await upload(app, ONE_PAGE)
    communication = await send(app)
    await upload(app, pdf_with_pages(3))
    first = await app.get(f"/fax/v1/faxes/{communication['id']}/preview", params={"page": "1"})
    assert first.status_code == 200
    beyond = await app.get(f"/fax/v1/faxes/{communication['id']}/preview", params={"page": "2"})
    assert beyond.status_code == 404 and "has 1 pages" in beyond.json()["message"]


async def test_a_new_send_of_the_replaced_key_checks_the_replacement(app: httpx.AsyncClient, database: Any) -> None:
    await upload(app, ONE_PAGE)
    first = await send(app)
    await upload(app, pdf_with_pages(5))
    refused = await app.post(
        "/fax/v1/send",
        json={"media": f"z3://{KEY}", "quality": "fine", "recipientNumber": "+16175550143", "sender": SEED_SENDER},
    )
    assert refused.status_code == 422 and "has 5 pages; at most 3" in refused.json()["message"]
    await upload(app, pdf_with_pages(2))
    second = await send(app)
    assert attachment(first)["extension"][0]["valueInteger"] == 1
    assert attachment(second)["extension"][0]["valueInteger"] == 2
    jobs = await database.fax_jobs.find({}).sort("created", 1).to_list(None)
    assert jobs[0]["media_version"] != jobs[1]["media_version"]


async def test_a_signed_upload_url_is_good_for_one_upload(app: httpx.AsyncClient, database: Any) -> None:
    url = await signed(app, "upload")
    first = await app.put(url, content=ONE_PAGE, headers={"content-type": "application/pdf"})
    assert first.status_code == 200
    again = await app.put(url, content=pdf_with_pages(3), headers={"content-type": "application/pdf"})
    assert again.status_code == 403
    assert again.json() == {
        "message": again.json()["message"],
        "code": 403,
    }
    assert "already been used" in again.json()["message"] and "ask for a new one" in again.json()["message"]
    assert await Z3Store(database).read(LOCATION) == ONE_PAGE
    assert await letters(database) == 1, "the second PUT stored nothing"
    assert await orphan_chunks(database) == 0


async def test_an_upload_url_without_its_nonce_is_refused(app: httpx.AsyncClient, database: Any) -> None:
    url = await signed(app, "upload")
    bare = "&".join(part for part in url.split("&") if not part.startswith("nonce="))
    response = await app.put(bare, content=ONE_PAGE)
    assert response.status_code == 403 and "nonce" in response.json()["message"]
    assert await letters(database) == 0


async def test_an_upload_refused_as_too_large_leaves_the_url_usable(frozen_settings: Settings, database: Any) -> None:
    async with serving(frozen_settings.model_copy(update={"z3_max_object_bytes": 1000}), database) as api:
        url = await signed(api, "upload")
        assert (await api.put(url, content=b"x" * 5000)).status_code == 413
        assert (await api.put(url, content=b"%PDF-1.4 small")).status_code == 200
        assert (await api.put(url, content=b"%PDF-1.4 again")).status_code == 403
    assert await Z3Store(database).read(LOCATION) == b"%PDF-1.4 small"


async def test_deleting_the_key_after_the_send_still_delivers_the_fax(
    app: httpx.AsyncClient, frozen_settings: Settings, database: Any
) -> None:
    await upload(app, ONE_PAGE)
    await upload(app, pdf_with_pages(2), key="letters/other.pdf")
    communication = await send(app)
    assert (await app.delete(f"/v1/z3/{KEY}")).status_code == 204
    assert await Z3Store(database).stat(LOCATION) is None, "the key is gone for every client"
    assert [o["key"] for o in (await app.get("/v1/z3/letters/")).json()] == ["other.pdf"]
    missing = await app.post(f"/v1/z3/{KEY}", json={"action": "download"})
    assert missing.status_code == 404
    worker, carrier = recording_worker(frozen_settings, database, takes_tiff=False)
    assert await worker.step() is True
    [submission] = carrier.submissions
    assert submission.document == ONE_PAGE
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    assert job["state"] == "submitted"
    # A new upload to the deleted key is a new document; the fax keeps its own.
    await upload(app, pdf_with_pages(3))
    assert await Z3Store(database).read(LOCATION) == pdf_with_pages(3)
    assert await Z3Store(database).read_version(job["media_version"]) == ONE_PAGE


async def test_unreferenced_versions_are_pruned_and_referenced_ones_kept(app: httpx.AsyncClient, database: Any) -> None:
    await upload(app, pdf_with_pages(2))
    await upload(app, ONE_PAGE)
    await send(app)  # pins the 1-page version
    await upload(app, pdf_with_pages(3))
    await upload(app, pdf_with_pages(4))
    kept = await database["z3.files"].find({"filename": "letters/referral.pdf"}).to_list(None)
    assert sorted(f["length"] for f in kept) == sorted([len(ONE_PAGE), len(pdf_with_pages(4))])
    assert await orphan_chunks(database) == 0, "pruned versions leave no chunks behind"


@pytest.mark.parametrize("lost", [("z3.files", "z3.chunks"), ("z3.chunks",)], ids=["whole", "its-bytes"])
async def test_a_pinned_version_that_is_gone_stops_the_fax_with_a_reason(
    app: httpx.AsyncClient, frozen_settings: Settings, database: Any, lost: tuple[str, ...]
) -> None:
    """Lost outside the API: the version (its files document and its chunks), or only its bytes."""
    await upload(app, ONE_PAGE)
    communication = await send(app)
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    for collection in lost:
        await database[collection].delete_many(
            {"_id" if collection == "z3.files" else "files_id": job["media_version"]}
        )
    worker, carrier = recording_worker(frozen_settings, database)
    assert await worker.step() is True
    final = (await app.get(f"/fhir/Communication/{communication['id']}")).json()
    assert final["status"] == "stopped"
    assert final["statusReason"]["coding"][0]["code"] == "FAILED"
    assert "no longer stored" in final["statusReason"]["text"]
    assert carrier.submissions == []


async def test_a_pinned_version_whose_files_record_alone_was_removed_is_still_faxed_as_checked(
    app: httpx.AsyncClient, frozen_settings: Settings, database: Any
) -> None:
    """The worker reads a pinned version's chunks and proves them by the SHA-1 the send recorded; the version's
    files record (which the server never removes) is not needed for that. Removed outside the API with its
    bytes left behind, the fax still carries exactly what was checked."""
    await upload(app, ONE_PAGE)
    communication = await send(app)
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    await database["z3.files"].delete_one({"_id": job["media_version"]})
    worker, carrier = recording_worker(frozen_settings, database, takes_tiff=False)
    assert await worker.step() is True
    [submission] = carrier.submissions
    assert (submission.document, submission.pages) == (ONE_PAGE, 1)


async def test_a_pinned_version_whose_bytes_changed_stops_the_fax(
    app: httpx.AsyncClient, frozen_settings: Settings, database: Any
) -> None:
    await upload(app, ONE_PAGE)
    communication = await send(app)
    job = await database.fax_jobs.find_one({"communication_id": communication["id"]})
    forged = pdf_with_pages(3)
    await database["z3.chunks"].update_one({"files_id": job["media_version"]}, {"$set": {"data": forged}})
    await database["z3.files"].update_one({"_id": job["media_version"]}, {"$set": {"length": len(forged)}})
    worker, carrier = recording_worker(frozen_settings, database)
    assert await worker.step() is True
    final = (await app.get(f"/fhir/Communication/{communication['id']}")).json()
    assert final["status"] == "stopped"
    assert "does not match" in final["statusReason"]["text"]
    assert carrier.submissions == []


async def test_the_communications_document_can_be_downloaded_by_its_hash(app: httpx.AsyncClient, database: Any) -> None:
    await upload(app, ONE_PAGE)
    communication = await send(app)
    await upload(app, pdf_with_pages(3))
    url = await signed(app, "download", hash=attachment(communication)["hash"])
    assert "version=" in url
    fetched = await app.get(url)
    assert (fetched.status_code, fetched.content) == (200, ONE_PAGE)
    assert (await app.get(await signed(app, "download"))).content == pdf_with_pages(3), "without hash: the newest"
    assert (await app.delete(f"/v1/z3/{KEY}")).status_code == 204
    after_delete = await app.get(await signed(app, "download", hash=attachment(communication)["hash"]))
    assert after_delete.content == ONE_PAGE, "the faxed document outlives the key"
    unknown = await app.post(f"/v1/z3/{KEY}", json={"action": "download", "hash": sha1(b"other")})
    assert unknown.status_code == 404 and "No document with hash" in unknown.json()["message"]
    bad = await app.post(f"/v1/z3/{KEY}", json={"action": "download", "hash": 12})
    assert bad.status_code == 400 and "hash" in bad.json()["message"]
    tampered = url.replace("version=", "version=0")
    assert (await app.get(tampered)).status_code == 403


async def test_two_puts_racing_on_one_upload_url_store_one_version(app: httpx.AsyncClient, database: Any) -> None:
    url = await signed(app, "upload")
    answers = await asyncio.gather(*(app.put(url, content=pdf_with_pages(n)) for n in (1, 2)))
    assert sorted(a.status_code for a in answers) == [200, 403]
    assert await letters(database) == 1
    winner = next(n for n, a in zip((1, 2), answers, strict=True) if a.status_code == 200)
    assert await Z3Store(database).read(LOCATION) == pdf_with_pages(winner)


async def test_unicode_digits_in_signed_urls_and_preview_pages_are_refused_not_errors(
    app: httpx.AsyncClient, database: Any
) -> None:
    await upload(app, ONE_PAGE)
    communication = await send(app)
    download = await signed(app, "download")
    expires = download.split("expires=")[1].split("&")[0]
    response = await app.get(download.replace(f"expires={expires}", "expires=%C2%B2"))
    assert response.status_code == 403 and "malformed (expires)" in response.json()["message"]
    page = await app.get(f"/fax/v1/faxes/{communication['id']}/preview", params={"page": "\u00b2"})
    assert page.status_code == 400 and "page must be a page number" in page.json()["message"]


async def test_a_refused_send_pins_nothing(app: httpx.AsyncClient, database: Any) -> None:
    await upload(app, ONE_PAGE)
    body = {"media": f"z3://{KEY}", "quality": "fine", "recipientNumber": "+16175550143", "sender": "Patient/nobody"}
    refused = await app.post("/fax/v1/send", json=body)
    assert refused.status_code == 422 and refused.json()["message"].startswith("sender:")
    assert await database["z3.files"].count_documents({"metadata.pinned": True}) == 0
    await upload(app, pdf_with_pages(2))
    assert await letters(database) == 1, "the unpinned version was pruned by the next upload"
