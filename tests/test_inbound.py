"""Received faxes: the Communication in the shape Ottehr reads, the document kept in Z3, the triage Task."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import uuid
from typing import Any

import httpx
from PIL import Image

from fhir_fax.auth.clients import Clients
from fhir_fax.fhir.models import model_class

from helpers import INSTANT, login
from inbound_helpers import (
    CALLER,
    OUR_NUMBER,
    REFERRAL,
    download,
    fax_tiff,
    get_page_count,
    get_pdf_url,
    get_sender_fax_number,
    inbound_counts,
    simulate,
)

ORGANIZATION = "Organization/riverside-family-medicine"


async def test_a_received_fax_is_a_communication_in_the_shape_ottehr_reads(fax_api: httpx.AsyncClient) -> None:
    response = await simulate(fax_api, REFERRAL)
    assert response.status_code == 201, response.text
    body = response.json()
    communication, task = body["communication"], body["task"]
    model_class("Communication").model_validate(communication)
    model_class("Task").model_validate(task)
    assert communication["status"] == "completed"
    assert INSTANT.match(communication["sent"]) and INSTANT.match(communication["received"])
    assert communication["medium"][0]["coding"][0]["code"] == "FAXWRIT"
    # sender: a contained Device holding the caller's number (system phone)
    sender_id = communication["sender"]["reference"].removeprefix("#")
    device = next(r for r in communication["contained"] if r["id"] == sender_id)
    assert device["resourceType"] == "Device"
    assert device["identifier"] == [{"system": "phone", "value": CALLER}]
    # recipient: the owner of the onboarded number, recorded at onboarding
    assert communication["recipient"] == [{"reference": ORGANIZATION}]
    attachment = communication["payload"][0]["contentAttachment"]
    assert set(attachment) >= {"url", "contentType", "title", "size", "hash"}
    assert attachment["contentType"] == "application/pdf"
    assert attachment["size"] == len(REFERRAL)
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(REFERRAL).digest()).decode()
    assert attachment["url"].startswith("http://fhir.test/v1/z3/fax-received/")
    fax_id = communication["identifier"][0]["value"]
    assert attachment["url"].endswith(f"/fax-received/{communication['received'][:10]}-{fax_id}.pdf")
    assert attachment["title"] == "Fax from +16175550188 (3 pages)"
    identifier = communication["identifier"][0]
    assert identifier["system"] == "https://identifiers.oystehr.com/fax"
    assert identifier["type"]["coding"][0]["code"] == "FAX-ID"
    urls = [e["url"] for e in communication["extension"]]
    assert "https://extensions.fhir.oystehr.com/inbound-fax-status" in urls
    assert "https://extensions.fhir.oystehr.com/outbound-fax-status" not in urls
    # Ottehr's three readers give the right values, unchanged
    assert get_sender_fax_number(communication) == CALLER
    assert get_page_count(communication) == 3
    assert get_pdf_url(communication) == attachment["url"]
    # the triage Task
    assert task["status"] == "requested"
    assert task["focus"] == {"reference": f"Communication/{communication['id']}"}
    assert task["description"] == "Inbound fax from +16175550188 (3 pages)"
    assert task["owner"] == {"reference": ORGANIZATION}
    # the document downloads byte for byte, through a signed URL as the SDK fetches it
    assert await download(fax_api, attachment["url"]) == REFERRAL
    # a reception that failed: stopped, with the reason, no document and no Task
    failed = await fax_api.post("/fax/v1/inbound/simulate", params={"from": CALLER, "to": OUR_NUMBER, "fail": "BUSY"})
    assert failed.status_code == 201 and failed.json()["task"] is None
    stopped = failed.json()["communication"]
    assert stopped["status"] == "stopped" and "payload" not in stopped
    assert stopped["statusReason"]["coding"][0]["code"] == "BUSY"
    assert stopped["statusReason"]["text"] == "The line was busy."
    assert get_page_count(stopped) is None and get_sender_fax_number(stopped) == CALLER
    # the reception settings name the bucket and the owner recorded at onboarding
    config = (await fax_api.get("/fax/v1/inbound/config")).json()
    assert config["bucket"] == "fax-received"
    assert {"faxNumber": OUR_NUMBER, "owner": ORGANIZATION} in config["numbers"]


async def test_inbound_faxes_are_found_by_search_and_addressed_to_the_owner(fax_api: httpx.AsyncClient) -> None:
    caller = f"+1617555{uuid.uuid4().int % 10_000:04d}"
    communication = (await simulate(fax_api, REFERRAL, caller=caller)).json()["communication"]

    async def ids(query: str) -> set[str]:
        response = await fax_api.get(f"/fhir/Communication?{query}")
        assert response.status_code == 200, response.text
        return {e["resource"]["id"] for e in response.json().get("entry", [])}

    assert communication["id"] in await ids("medium=FAXWRIT&status=completed")
    assert communication["id"] in await ids(f"recipient={ORGANIZATION}")
    assert await ids(f"sender-number={caller.replace('+', '%2B')}") == {communication["id"]}
    assert await ids(f"sender-number=phone|{caller.replace('+', '%2B')}") == {communication["id"]}
    assert communication["id"] in await ids("category=urn:fhir-fax:fax-direction|inbound")
    tasks = (await fax_api.get("/fhir/Task", params={"status": "requested", "code": "file-inbound-fax"})).json()
    assert f"Communication/{communication['id']}" in {e["resource"]["focus"]["reference"] for e in tasks["entry"]}
    focused = (await fax_api.get("/fhir/Task", params={"focus": f"Communication/{communication['id']}"})).json()
    assert len(focused["entry"]) == 1
    # the recipient: the owner given at onboarding, else a contained Device for the line
    practitioner = "Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c"
    owned = await fax_api.post("/fax/v1/onboard", json={"faxNumber": "+16175550177", "owner": practitioner})
    assert owned.status_code == 200, owned.text
    bare = await fax_api.post("/fax/v1/onboard", json={"faxNumber": "+16175550178"})
    assert bare.status_code == 200
    refused = await fax_api.post("/fax/v1/onboard", json={"faxNumber": "+16175550179", "owner": "Patient/maria-lopez"})
    assert refused.status_code == 400 and refused.json()["message"].startswith("owner must be a reference to one of")
    missing = await fax_api.post("/fax/v1/onboard", json={"faxNumber": "+16175550179", "owner": "Organization/none"})
    assert missing.status_code == 422 and "Organization/none does not exist" in missing.json()["message"]
    to_owner = (await simulate(fax_api, REFERRAL, to="+16175550177")).json()["communication"]
    assert to_owner["recipient"] == [{"reference": practitioner}]
    to_line = (await simulate(fax_api, REFERRAL, to="+16175550178")).json()["communication"]
    device = next(r for r in to_line["contained"] if f"#{r['id']}" == to_line["recipient"][0]["reference"])
    assert device["resourceType"] == "Device" and device["identifier"][0]["value"] == "+16175550178"
    model_class("Communication").model_validate(to_line)


async def test_a_tiff_becomes_a_pdf_and_the_original_is_kept(fax_api: httpx.AsyncClient, database: Any) -> None:
    tiff = fax_tiff(pages=2)
    response = await simulate(fax_api, tiff)
    assert response.status_code == 201, response.text
    communication = response.json()["communication"]
    pdf = await download(fax_api, get_pdf_url(communication) or "")
    assert pdf.startswith(b"%PDF-")
    assert get_page_count(communication) == 2
    original = communication["payload"][1]["contentAttachment"]
    assert original["contentType"] == "image/tiff" and original["url"].endswith(".original.tif")
    assert await download(fax_api, original["url"]) == tiff
    with Image.open(io.BytesIO(tiff)) as image:
        assert image.n_frames == 2
    # Ottehr's fax integration policy (Fax:Send, and Z3 on fax-received/*) reaches both documents
    ottehr = {
        "rule": [
            {"resource": "Fax:Fax:*", "action": "Fax:Send", "effect": "Allow"},
            {"resource": "Z3:fax-received/*", "action": "Z3:GetObject", "effect": "Allow"},
        ]
    }
    record, secret = await Clients(database).create("ottehr", ottehr)
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as http:
        await login(http, record["clientId"], secret)
        assert await download(http, get_pdf_url(communication) or "") == pdf
        assert await download(http, original["url"]) == tiff


async def test_the_same_fax_delivered_twice_is_one_communication(fax_api: httpx.AsyncClient, database: Any) -> None:
    first = await simulate(fax_api, REFERRAL, fax_id="carrier-fax-1")
    again = await simulate(fax_api, REFERRAL, fax_id="carrier-fax-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["duplicate"] is True
    assert again.json()["communication"] == first.json()["communication"]
    counts = await inbound_counts(database)
    assert (counts["inbound_faxes"], counts["Task"], counts["received documents"]) == (1, 1, 1)
    # two deliveries at the same moment: one receives, the other answers what it stored
    together = await asyncio.gather(*(simulate(fax_api, REFERRAL, fax_id="carrier-fax-2") for _ in range(2)))
    assert sorted(r.status_code for r in together) == [200, 201]
    assert together[0].json()["communication"] == together[1].json()["communication"]
    counts = await inbound_counts(database)
    assert (counts["inbound_faxes"], counts["Task"], counts["received documents"]) == (2, 2, 2)


async def test_refused_faxes_store_nothing(fax_api: httpx.AsyncClient, database: Any) -> None:
    """A number not onboarded, a hostile or empty document, bad numbers, no Fax:Receive: refused, nothing stored."""
    before = await inbound_counts(database)
    response = await simulate(fax_api, REFERRAL, to="+16175550199")
    assert response.status_code == 422
    assert response.json()["message"].startswith("to: '+16175550199' is not a fax number onboarded to this project")
    cases = {
        b"": "The fax carried no document (0 bytes).",
        b"%PDF-1.4\n<html><script>alert(1)</script></html>": "also contains HTML",
        b"not a document at all": "neither a PDF nor a TIFF",
        fax_tiff(pages=1) + b"%PDF-1.4 hidden": "The image also contains a PDF",
    }
    for document, message in cases.items():
        response = await simulate(fax_api, document)
        assert response.status_code == 422, response.text
        assert message in response.json()["message"]
        assert response.json()["message"].endswith("Nothing was stored.") or "0 bytes" in message
    response = await fax_api.post("/fax/v1/inbound/simulate", params={"to": OUR_NUMBER}, content=REFERRAL)
    assert response.status_code == 400 and "'from' is required" in response.json()["message"]
    response = await simulate(fax_api, REFERRAL, caller="555-0100")
    assert response.status_code == 400 and response.json()["message"].startswith("from: '555-0100' is not in E.164")
    params = {"from": CALLER, "to": OUR_NUMBER, "fail": "BROKEN"}
    response = await fax_api.post("/fax/v1/inbound/simulate", params=params)
    assert response.status_code == 400 and response.json()["message"].startswith("fail: 'BROKEN' is not a failure code")
    assert await inbound_counts(database) == before
    # a client without Fax:Receive may neither simulate nor read the reception settings
    policy = {"rule": [{"resource": "*", "action": ["FHIR:*", "Fax:Send", "Z3:*"], "effect": "Allow"}]}
    record, secret = await Clients(database).create("no reception", policy)
    before = await inbound_counts(database)
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as http:
        await login(http, record["clientId"], secret)
        response = await simulate(http, REFERRAL)
        assert response.status_code == 403
        assert "does not allow Fax:Receive" in response.json()["message"]
        assert (await http.get("/fax/v1/inbound/config")).status_code == 403
    assert await inbound_counts(database) == before


async def test_received_documents_are_pinned_so_an_upload_or_a_delete_keeps_them(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    tiff = fax_tiff(pages=1, text="Lab results")
    communication = (await simulate(fax_api, tiff, fax_id=f"pin-{uuid.uuid4().hex[:8]}")).json()["communication"]
    received = [entry["contentAttachment"] for entry in communication["payload"]]
    assert len(received) == 2, "the PDF and the carrier's TIFF"
    kept = [await download(fax_api, attachment["url"]) for attachment in received]
    assert kept[1] == tiff
    for attachment, original in zip(received, kept, strict=True):
        path = attachment["url"].split("/v1/z3/", 1)[1]
        upload = await fax_api.post(f"/v1/z3/{path}", json={"action": "upload"})
        assert upload.status_code == 200, upload.text
        replaced = await fax_api.put(upload.json()["signedUrl"], content=b"%PDF-1.4 other bytes")
        assert replaced.status_code == 200, replaced.text
        assert await download(fax_api, attachment["url"]) == b"%PDF-1.4 other bytes", "the key holds the upload"
        by_hash = await fax_api.post(f"/v1/z3/{path}", json={"action": "download", "hash": attachment["hash"]})
        assert by_hash.status_code == 200, by_hash.text
        assert (await fax_api.get(by_hash.json()["signedUrl"])).content == original, "the received version stays"
        assert (await fax_api.delete(f"/v1/z3/{path}")).status_code == 204
        after = await fax_api.post(f"/v1/z3/{path}", json={"action": "download", "hash": attachment["hash"]})
        assert after.status_code == 200, after.text
        assert (await fax_api.get(after.json()["signedUrl"])).content == original, "and outlives the key"
