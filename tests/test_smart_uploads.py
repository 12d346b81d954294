"""A token limited to one patient may fax or preview a document no fax carries only if it was uploaded under that
same patient: an upload records the patient in context of the uploader's token (signed into the upload URL, kept
with the stored version), so another patient's unsent upload, or a staff upload, stays out of reach."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import FIXTURES, as_parameters, seed_request
from smart_helpers import Flow, make_app, make_user, token_for

MARIA, JAMES = "maria-lopez", "james-oneil"
PDF = (FIXTURES / "referral-letter.pdf").read_bytes()


async def _upload(client: httpx.AsyncClient, key: str) -> str:
    signed = await client.post(f"/v1/z3/my-bucket/{key}", json={"action": "upload"})
    assert signed.status_code == 200, signed.text
    stored = await client.put(signed.json()["signedUrl"], content=PDF, headers={"content-type": "application/pdf"})
    assert stored.status_code == 200, stored.text
    return f"z3://my-bucket/{key}"


async def _token(web: httpx.AsyncClient, database: Any, patient: str) -> str:
    username = await make_user(database)
    app = await make_app(database)
    body = await token_for(web, Flow(app, "launch/patient patient/*.cruds"), username, patient=patient)
    return f"Bearer {body['access_token']}"


async def _refusals(database: Any) -> list[str]:
    events = await database["AuditEvent"].find({"subtype.code": "access-refused"}).to_list(None)
    return [event["outcomeDesc"] for event in events]


async def test_a_patient_token_previews_only_uploads_made_under_its_patient(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    run = uuid.uuid4().hex[:8]
    staff = await _upload(fax_api, f"staff-{run}.pdf")  # an unlimited client's upload: no patient recorded
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        maria, james = await _token(web, database, MARIA), await _token(web, database, JAMES)
        web.headers["authorization"] = james
        jamess = await _upload(web, f"james-{run}.pdf")
        [stored] = await database["z3.files"].find({"filename": f"my-bucket/james-{run}.pdf"}).to_list(None)
        assert stored["metadata"]["uploadedFor"] == JAMES

        web.headers["authorization"] = maria
        for url in (staff, jamess):
            body = seed_request(media=url, patient=f"Patient/{MARIA}", page=1)
            preview = await web.post("/fax/v1/preview", json=body)
            assert preview.status_code == 403, preview.text
            assert "was not uploaded under Patient/maria-lopez" in preview.json()["message"]
            parameters = as_parameters(seed_request(media=url, patient=f"Patient/{MARIA}"))
            fhir = await web.post("/fhir/Communication/$preview-fax", json=parameters)
            assert fhir.status_code == 403 and "was not uploaded under" in fhir.json()["issue"][0]["diagnostics"]
            communications = await database["Communication"].count_documents({})
            sent = await web.post("/fax/v1/send", json=seed_request(media=url, patient=f"Patient/{MARIA}"))
            assert sent.status_code == 403 and "was not uploaded under" in sent.json()["message"], sent.text
            assert await database["Communication"].count_documents({}) == communications
        assert any(f"my-bucket/james-{run}.pdf was not uploaded under" in r for r in await _refusals(database))

        marias = await _upload(web, f"maria-{run}.pdf")
        own = await web.post("/fax/v1/preview", json=seed_request(media=marias, patient=f"Patient/{MARIA}", page=1))
        assert own.status_code == 200 and own.headers["content-type"] == "image/png", own.text

        # The staff upload, once faxed for Maria, is carried by a fax in her compartment: hers to attach.
        faxed = await fax_api.post("/fax/v1/send", json=seed_request(media=staff, patient=f"Patient/{MARIA}"))
        assert faxed.status_code == 200, faxed.text
        carried = await web.post("/fax/v1/preview", json=seed_request(media=staff, patient=f"Patient/{MARIA}", page=1))
        assert carried.status_code == 200, carried.text


async def test_the_uploader_patient_is_signed_into_the_upload_url(fax_api: httpx.AsyncClient, database: Any) -> None:
    key = f"signed-{uuid.uuid4().hex[:8]}.pdf"
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        web.headers["authorization"] = await _token(web, database, JAMES)
        signed = (await web.post(f"/v1/z3/my-bucket/{key}", json={"action": "upload"})).json()["signedUrl"]
    parts = urlsplit(signed)
    query = dict(parse_qsl(parts.query))
    assert query["patient"] == JAMES
    for changed in ({k: v for k, v in query.items() if k != "patient"}, {**query, "patient": MARIA}):
        forged = await fax_api.put(f"{parts.path}?{urlencode(changed)}", content=PDF)
        assert forged.status_code == 403 and "signature does not match" in forged.json()["message"], forged.text
    assert await Z3Store(database).stat(Z3Location("my-bucket", key)) is None
