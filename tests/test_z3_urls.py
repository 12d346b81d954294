"""Presigned Z3 URLs: the SDK's upload-then-download flow, and every way a signed URL is refused."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import serving


async def signed(api: httpx.AsyncClient, path: str, action: str) -> str:
    response = await api.post(f"/v1/z3/{path}", json={"action": action})
    assert response.status_code == 200, response.text
    return response.json()["signedUrl"]


async def test_upload_then_download_through_signed_urls(api: httpx.AsyncClient, database: Any) -> None:
    upload = await signed(api, "letters/2026/referral.pdf", "upload")
    assert upload.startswith("http://fhir.test/v1/z3/letters/2026/referral.pdf?action=upload&expires=")
    stored = await api.put(upload, content=b"%PDF-1.4 letter", headers={"content-type": "application/pdf"})
    assert stored.status_code == 200
    info = await Z3Store(database).stat(Z3Location("letters", "2026/referral.pdf"))
    assert info is not None and info.size == len(b"%PDF-1.4 letter")
    download = await signed(api, "letters/2026/referral.pdf", "download")
    fetched = await api.get(download)
    assert (fetched.status_code, fetched.content) == (200, b"%PDF-1.4 letter")
    assert fetched.headers["content-type"] == "application/pdf"


async def test_downloads_never_run_as_pages_of_this_origin(api: httpx.AsyncClient) -> None:
    """An uploader chooses the content type: a download must not let HTML or SVG run scripts on this server's origin."""
    upload = await signed(api, "letters/page.html", "upload")
    html = b"<html><script>fetch('/v1/m2m')</script></html>"
    assert (await api.put(upload, content=html, headers={"content-type": "text/html"})).status_code == 200
    fetched = await api.get(await signed(api, "letters/page.html", "download"))
    assert (fetched.status_code, fetched.content) == (200, html)
    assert fetched.headers["x-content-type-options"] == "nosniff"
    assert fetched.headers["content-disposition"] == 'attachment; filename="page.html"'
    assert fetched.headers["content-security-policy"] == "sandbox; default-src 'none'"


async def test_a_download_url_serves_the_version_that_was_judged_when_it_was_signed(api: httpx.AsyncClient) -> None:
    """Access to a download is decided (and audited) when the URL is signed, so the URL is bound to that version.

    Otherwise an upload to the same key within the URL's lifetime would be served under a decision taken on
    other bytes (for a patient-limited token: another patient's document).
    """
    first = await signed(api, "letters/judged.pdf", "upload")
    assert (await api.put(first, content=b"%PDF-1.4 first")).status_code == 200
    download = await signed(api, "letters/judged.pdf", "download")
    assert "version=" in download
    second = await signed(api, "letters/judged.pdf", "upload")
    assert (await api.put(second, content=b"%PDF-1.4 second")).status_code == 200
    fetched = await api.get(download)
    assert fetched.status_code == 404, "the judged version was replaced (and pruned): ask for a new URL"
    assert "ask for a new download URL" in fetched.json()["message"]
    fresh = await api.get(await signed(api, "letters/judged.pdf", "download"))
    assert (fresh.status_code, fresh.content) == (200, b"%PDF-1.4 second")


def tamper(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"


async def test_refused_signed_urls(api: httpx.AsyncClient, database: Any) -> None:
    await Z3Store(database).put(Z3Location("letters", "a.pdf"), b"%PDF-1.4 a")
    await Z3Store(database).put(Z3Location("letters", "b.pdf"), b"%PDF-1.4 b")
    download = await signed(api, "letters/a.pdf", "download")
    cases = [
        (download.replace("/a.pdf", "/b.pdf"), 403, "does not match this object"),
        (tamper(download, expires="1"), 403, "has expired"),
        (
            tamper(download, expires=str(int(dict(parse_qsl(urlsplit(download).query))["expires"]) + 60)),
            403,
            "does not match",
        ),
        (tamper(download, action="upload"), 403, "not for download"),
    ]
    for url, status, message in cases:
        response = await api.get(url)
        assert response.status_code == status, (url, response.text)
        assert message in response.json()["message"]
    bare = await api.get(download.split("?")[0])  # without a signature this is the SDK's listObjects
    assert bare.json() == [{"key": "a.pdf", "lastModified": bare.json()[0]["lastModified"]}]
    assert b"%PDF" not in bare.content
    unsigned_upload = await api.put(download.split("?")[0], content=b"overwritten")
    assert unsigned_upload.status_code == 401 and "needs a signature" in unsigned_upload.json()["message"]
    upload_with_download_url = await api.put(download, content=b"overwritten")
    assert upload_with_download_url.status_code == 403
    assert await Z3Store(database).read(Z3Location("letters", "a.pdf")) == b"%PDF-1.4 a"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("letters/missing.pdf", {"action": "download"}, 404, "There is no object"),
        ("letters/x.pdf", {"action": "delete"}, 400, 'action must be "upload" or "download"'),
        ("letters/x.pdf", "not json", 400, "The body must be JSON"),
        ("Bad_Bucket/x.pdf", {"action": "upload"}, 400, "not a valid bucket name"),
        ("letters/a/%2E%2E/b.pdf", {"action": "upload"}, 400, "no valid object key"),
        ("letters/a/%2e%2e/%2e%2e/etc.pdf", {"action": "upload"}, 400, "no valid object key"),
    ],
)
async def test_bad_presign_requests(
    api: httpx.AsyncClient, path: str, body: dict[str, str] | str, status: int, message: str
) -> None:
    if isinstance(body, str):
        response = await api.post(f"/v1/z3/{path}", content=body.encode())
    else:
        response = await api.post(f"/v1/z3/{path}", json=body)
    assert response.status_code == status
    assert message in response.json()["message"]


async def test_buckets_and_objects(api: httpx.AsyncClient, database: Any) -> None:
    made_at_start = [b["name"] for b in (await api.get("/v1/z3")).json()]
    assert made_at_start == ["fax-app"], "only the fax app's upload bucket exists at start-up"
    created = await api.put("/v1/z3/letters")
    assert created.json() == {"id": "letters", "name": "letters"}
    again = await api.put("/v1/z3/letters")
    assert again.status_code == 409 and "already exists" in again.json()["message"]
    assert sorted(b["name"] for b in (await api.get("/v1/z3")).json()) == ["fax-app", "letters"]
    store = Z3Store(database)
    for key in ("2026/01/a.pdf", "2026/02/b.pdf", "other/c.pdf"):
        await store.put(Z3Location("letters", key), b"%PDF-1.4")
    listed = (await api.get("/v1/z3/letters/2026/")).json()
    assert [o["key"] for o in listed] == ["2026/01/a.pdf", "2026/02/b.pdf"]
    not_empty = await api.delete("/v1/z3/letters")
    assert not_empty.status_code == 409 and "not empty" in not_empty.json()["message"]
    for key in ("2026/01/a.pdf", "2026/02/b.pdf", "other/c.pdf"):
        assert (await api.delete(f"/v1/z3/letters/{key}")).status_code == 204
    missing = await api.delete("/v1/z3/letters/other/c.pdf")
    assert missing.status_code == 404
    assert (await api.delete("/v1/z3/letters")).status_code == 204
    assert [b["name"] for b in (await api.get("/v1/z3")).json()] == made_at_start
    assert (await api.delete("/v1/z3/letters")).status_code == 404
    assert (await api.put("/v1/z3/Not_A_Bucket")).status_code == 400


async def test_uploads_over_the_limit_are_413_and_leave_nothing(settings: Any, database: Any) -> None:

    small = settings.model_copy(update={"z3_max_object_bytes": 1000})
    async with serving(small, database) as http:
        url = (await http.post("/v1/z3/letters/big.pdf", json={"action": "upload"})).json()["signedUrl"]
        declared = await http.put(url, content=b"x" * 5000)
        assert declared.status_code == 413

        async def chunks():  # no content-length: the limit is enforced while streaming
            for _ in range(10):
                yield b"x" * 300

        streamed = await http.put(url, content=chunks())
        assert streamed.status_code == 413
        assert "at most 1000 bytes" in streamed.json()["message"]
    assert await Z3Store(database).stat(Z3Location("letters", "big.pdf")) is None
    assert await database["z3.chunks"].count_documents({}) == 0, "the partial upload was removed"
