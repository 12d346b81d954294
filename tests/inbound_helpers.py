"""What the inbound tests share: received-fax documents, Ottehr's readers of an inbound fax, and store counts."""

from __future__ import annotations

import io
from typing import Any

import httpx
from PIL import Image, ImageDraw

from fhir_fax.fax.inbound import COLLECTION as INBOUND
from fhir_fax.z3.store import GRIDFS_BUCKET

from helpers import FIXTURES

REFERRAL = (FIXTURES / "referral-letter.pdf").read_bytes()
FAX_PAGES_EXTENSION_URL = "https://extensions.fhir.oystehr.com/fax-pages"
CALLER = "+16175550188"
OUR_NUMBER = "+12223334444"  # onboarded by ``serving_fax``; the fixtures' Organization owns it


def fax_tiff(pages: int = 2, text: str = "Referral for Maria Lopez") -> bytes:
    """A TIFF as a fax line delivers it: 1728 wide, 204 x 196 dpi, 1 bit, Group 4, ``pages`` pages."""
    frames = []
    for number in range(pages):
        page = Image.new("1", (1728, 2200), 1)
        ImageDraw.Draw(page).text((200, 200 + 40 * number), f"{text} - page {number + 1}", fill=0)
        frames.append(page)
    output = io.BytesIO()
    frames[0].save(output, format="TIFF", compression="group4", dpi=(204, 196), save_all=True, append_images=frames[1:])
    return output.getvalue()


# -- Ottehr's handle-inbound-fax, its three readers of a Communication, in Python --------------------------


def get_sender_fax_number(communication: dict[str, Any]) -> str:
    sender_ref = (communication.get("sender") or {}).get("reference")
    if sender_ref and sender_ref.startswith("#"):
        contained_id = sender_ref[1:]
        contained = communication.get("contained", [])
        device = next((r for r in contained if r["resourceType"] == "Device" and r["id"] == contained_id), None)
        if device is not None and "identifier" in device:
            identifiers = device.get("identifier") or []
            phone = next((i for i in identifiers if i.get("system") == "phone" and i.get("value")), None) or next(
                (i for i in identifiers if i.get("value")), None
            )
            if phone and phone.get("value"):
                return str(phone["value"])
        return contained_id
    return str(sender_ref) if sender_ref else "unknown"


def get_page_count(communication: dict[str, Any]) -> int | None:
    extension = next((e for e in communication.get("extension", []) if e["url"] == FAX_PAGES_EXTENSION_URL), None)
    return None if extension is None else extension.get("valueInteger")


def get_pdf_url(communication: dict[str, Any]) -> str | None:
    payload = communication.get("payload") or []
    return payload[0].get("contentAttachment", {}).get("url") if payload else None


# -- helpers -------------------------------------------------------------------------------------------------


async def simulate(
    http: httpx.AsyncClient, document: bytes, *, to: str = OUR_NUMBER, caller: str = CALLER, fax_id: str | None = None
) -> httpx.Response:
    params = {"from": caller, "to": to} | ({"id": fax_id} if fax_id else {})
    return await http.post("/fax/v1/inbound/simulate", params=params, content=document)


async def inbound_counts(database: Any) -> dict[str, int]:
    """What a reception writes: its records, Communications, Tasks, and the objects of the reception bucket."""
    return {
        "inbound_faxes": await database[INBOUND].count_documents({}),
        "Communication": await database["Communication"].count_documents({}),
        "Task": await database["Task"].count_documents({}),
        "DocumentReference": await database["DocumentReference"].count_documents({}),
        "received documents": await database[f"{GRIDFS_BUCKET}.files"].count_documents(
            {"filename": {"$regex": "^fax-received/"}}
        ),
    }


async def download(http: httpx.AsyncClient, url: str) -> bytes:
    """The document at a Communication's attachment URL, fetched as the SDK does (a signed download URL)."""
    path = url.split("/v1/z3/", 1)[1] if "/v1/z3/" in url else url.removeprefix("z3://")
    signed = await http.post(f"/v1/z3/{path}", json={"action": "download"})
    assert signed.status_code == 200, signed.text
    response = await http.get(signed.json()["signedUrl"])
    assert response.status_code == 200, response.text
    return response.content
