"""Values from outside are read by full-match, ASCII-only rules: no 500s, no trailing newlines, bounded nesting.

Python's ``str.isdigit()`` is True for ``"²"`` while ``int("²")`` fails, and a regex ending in ``$``
also matches before a final newline; each case below was a 500 or a silently accepted value.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fhir_fax.fhir.inputs import ascii_int
from fhir_fax.settings import Settings
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import FHIR_JSON, SEED_SENDER, as_parameters, serving, stored_counts

FHIR = {"content-type": "application/fhir+json"}
UNICODE_DIGITS = ("²", "٣", "\uff11", "7\n", " 7", "+7", "1_0", "9" * 5000)


@pytest.mark.parametrize("text", UNICODE_DIGITS)
def test_ascii_int_takes_only_ascii_digits(text: str) -> None:
    assert ascii_int(text) is None


def test_ascii_int_reads_plain_numbers() -> None:
    assert [ascii_int(t) for t in ("0", "7", "0012", "123456789012345678")] == [0, 7, 12, 123456789012345678]
    assert ascii_int(None) is None and ascii_int(7) is None


async def created_patient(api: httpx.AsyncClient) -> dict[str, Any]:
    response = await api.post("/fhir/Patient", json={"resourceType": "Patient", "active": True}, headers=FHIR)
    assert response.status_code == 201
    return response.json()


@pytest.mark.parametrize("digit", ["²", "³"])  # Latin-1, so they also travel in a header
async def test_unicode_digits_in_fhir_parameters_are_refused(api: httpx.AsyncClient, database: Any, digit: str) -> None:
    patient = await created_patient(api)
    search = await api.get("/fhir/Patient", params={"_count": digit})
    assert search.status_code == 400
    assert "_count must be a whole number" in search.json()["issue"][0]["diagnostics"]
    history = await api.get(f"/fhir/Patient/{patient['id']}/_history", params={"_count": digit})
    assert history.status_code == 400
    assert "_count must be a whole number" in history.json()["issue"][0]["diagnostics"]
    vread = await api.get(f"/fhir/Patient/{patient['id']}/_history/{digit}")
    assert vread.status_code == 404
    assert f"has no version {digit!r}" in vread.json()["issue"][0]["diagnostics"]
    changed = {**patient, "active": False}
    update = await api.put(
        f"/fhir/Patient/{patient['id']}", json=changed, headers={**FHIR, "if-match": f'W/"{digit}"'.encode("latin-1")}
    )
    assert update.status_code == 400
    outcome = update.json()["issue"][0]
    assert "If-Match must name a version" in outcome["diagnostics"] and outcome["expression"] == ["If-Match"]
    current = (await api.get(f"/fhir/Patient/{patient['id']}")).json()
    assert current["meta"]["versionId"] == "1" and current["active"] is True, "nothing was stored"


async def test_unicode_digits_in_a_signed_url_expiry_are_refused(api: httpx.AsyncClient, database: Any) -> None:
    url = (await api.post("/v1/z3/letters/a.pdf", json={"action": "upload"})).json()["signedUrl"]
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | {"expires": "9999999999²"}
    response = await api.put(f"{parts.path}?{urlencode(query)}", content=b"%PDF-1.4 x")
    assert response.status_code == 403
    assert response.json() == {"message": "The signed URL is malformed (expires).", "code": 403}
    assert await Z3Store(database).stat(Z3Location("letters", "a.pdf")) is None


async def test_unicode_digits_in_a_preview_page_are_refused(fax_api: httpx.AsyncClient, database: Any) -> None:
    body = {"media": "z3://my-bucket/path/to/document.pdf", "recipientNumber": "+16175550143", "sender": SEED_SENDER}
    sent = await fax_api.post("/fax/v1/send", json={**body, "quality": "standard"})
    communication_id = sent.json()["communicationResource"]["id"]
    for page in ("²", "٣", "1\n", "0"):
        response = await fax_api.get(f"/fax/v1/faxes/{communication_id}/preview", params={"page": page})
        assert response.status_code == 400, page
        assert response.json() == {"message": "page must be a page number from 1 up, e.g. ?page=1.", "code": 400}
    assert await database["z3.files"].count_documents({"filename": {"$regex": r"\.tif$"}}) == 0, "nothing rendered"


KEY = Ed25519PrivateKey.generate()
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


@pytest.mark.parametrize(
    "stamp", ["²", f"{int(time.time())}³", f"{int(time.time())}\t"], ids=["superscript", "now-superscript", "now-tab"]
)
async def test_unicode_digits_in_a_webhook_timestamp_are_refused(settings: Settings, database: Any, stamp: str) -> None:
    configured = settings.model_copy(update={"telnyx_public_key": PUBLIC, "worker_enabled": False})
    body = json.dumps({"data": {"id": "e1", "event_type": "fax.delivered", "payload": {}}}).encode()
    signature = base64.b64encode(KEY.sign(stamp.encode() + b"|" + body)).decode()
    headers = {
        "content-type": "application/json",
        "telnyx-signature-ed25519": signature,
        "telnyx-timestamp": stamp.encode("latin-1"),
    }
    async with serving(configured, database, authenticated=False) as http:
        response = await http.post("/fax/webhooks/telnyx", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["message"] == "The webhook's telnyx-timestamp is not a Unix time."
    assert await database.webhook_receipts.count_documents({}) == 0


# -- trailing newlines -------------------------------------------------------------------------------


@pytest.mark.parametrize("door", ["sdk", "fhir"])
@pytest.mark.parametrize("number", ["+16175550143\n", "+1617555014٣", "+16175550143\r"])
async def test_a_recipient_number_with_a_trailing_newline_is_refused(
    fax_api: httpx.AsyncClient, database: Any, door: str, number: str
) -> None:
    body = {
        "media": "z3://my-bucket/path/to/document.pdf",
        "quality": "standard",
        "recipientNumber": number,
        "sender": SEED_SENDER,
    }
    if door == "sdk":
        response = await fax_api.post("/fax/v1/send", json=body)
        message = response.json()["message"]
    else:
        response = await fax_api.post("/fhir/Communication/$send-fax", json=as_parameters(body), headers=FHIR_JSON)
        message = response.json()["issue"][0]["diagnostics"]
    assert response.status_code == 400
    assert f"recipientNumber: {number!r} is not in E.164 form" in message
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}


async def test_an_onboarded_number_with_a_trailing_newline_is_refused(api: httpx.AsyncClient, database: Any) -> None:
    response = await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444\n"})
    assert response.status_code == 400
    assert "faxNumber: '+12223334444\\n' is not in E.164 form" in response.json()["message"]
    assert await database.fax_numbers.count_documents({}) == 0


async def test_a_bucket_name_with_a_trailing_newline_is_refused(api: httpx.AsyncClient, database: Any) -> None:
    before = await Z3Store(database).list_buckets()  # the fax app's upload bucket, made at start-up
    created = await api.put("/v1/z3/letters%0A")
    assert created.status_code == 400
    assert "'letters\\n', which is not a valid bucket name" in created.json()["message"]
    presigned = await api.post("/v1/z3/letters%0A/a.pdf", json={"action": "upload"})
    assert presigned.status_code == 400 and "not a valid bucket name" in presigned.json()["message"]
    assert await Z3Store(database).list_buckets() == before


# -- nesting depth -----------------------------------------------------------------------------------


def nested_extension(depth: int) -> str:
    """An extension holding an extension ... ``depth`` deep, as JSON text (json.dumps recurses too)."""
    leaf = '{"url": "urn:x", "valueString": "leaf"}'
    return '{"url": "urn:x", "extension": [' * (depth - 1) + leaf + "]}" * (depth - 1)


@pytest.mark.parametrize("depth", [150, 300])
async def test_deeply_nested_extensions_are_refused_before_validation(
    api: httpx.AsyncClient, database: Any, depth: int
) -> None:
    body = '{"resourceType": "Patient", "extension": [' + nested_extension(depth) + "]}"
    response = await api.post("/fhir/Patient", content=body, headers=FHIR)
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["diagnostics"].startswith("Patient.extension[0]")
    assert "nested more than 64 levels deep" in issue["diagnostics"]
    assert issue["expression"][0].startswith("Patient.extension[0].extension[0].extension[0]")
    assert await database.Patient.count_documents({}) == 0


async def test_nesting_within_the_limit_is_stored(api: httpx.AsyncClient) -> None:
    body = '{"resourceType": "Patient", "extension": [' + nested_extension(25) + "]}"
    response = await api.post("/fhir/Patient", content=body, headers=FHIR)
    assert response.status_code == 201, response.text


async def test_unicode_digits_in_a_content_length_are_not_a_500(api: httpx.AsyncClient, database: Any) -> None:
    """Servers such as uvicorn refuse such a header; the module also runs inside other ASGI servers."""
    url = (await api.post("/v1/z3/letters/a.pdf", json={"action": "upload"})).json()["signedUrl"]
    upload = await api.put(url, content=b"%PDF-1.4 x", headers={"content-length": "²".encode("latin-1")})
    assert upload.status_code == 200, "the limit is enforced on the stream itself"
    patient = await api.post(
        "/fhir/Patient", content=b'{"resourceType": "Patient"}', headers={**FHIR, "content-length": b"\xb2"}
    )
    assert patient.status_code == 201


async def test_a_deeply_nested_paging_cursor_is_refused(api: httpx.AsyncClient) -> None:
    cursor = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode()
    response = await api.get("/fhir/Patient", params={"_cursor": cursor})
    assert response.status_code == 400
    assert "_cursor is not a cursor this server issued" in response.json()["issue"][0]["diagnostics"]


async def test_a_configured_carrier_number_with_a_trailing_newline_is_not_onboarded(
    settings: Settings, database: Any
) -> None:
    carrier = settings.model_copy(
        update={"carrier": "telnyx", "carrier_fax_number": "+13125550123\n", "worker_enabled": False}
    )
    async with serving(carrier, database) as api:
        response = await api.post("/fax/v1/onboard", json={})
    assert response.status_code == 422
    assert response.json()["message"].startswith("FHIR_FAX_CARRIER_FAX_NUMBER: '+13125550123\\n' is not in E.164")
    assert await database.fax_numbers.count_documents({}) == 0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/z3/letters/a.pdf", "The body must be JSON"),  # presigned URL request
        ("/fax/v1/onboard", "The body must be JSON"),
    ],
)
async def test_json_nested_thousands_deep_is_a_400_on_the_sdk_routes(
    api: httpx.AsyncClient, database: Any, path: str, message: str
) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    response = await api.post(path, content=nested, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(message)
    assert await database.fax_numbers.count_documents({}) == 0
    assert await database["z3_used_upload_urls"].count_documents({}) == 0
