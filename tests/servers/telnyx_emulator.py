"""A local emulator of Telnyx Programmable Fax v2, built from its documented API, for the tests.

Run as ``python telnyx_emulator.py PORT API_KEY PRIVATE_KEY_HEX``. It implements POST/GET ``/v2/faxes``
and GET ``/v2/faxes/{id}``, fetches ``media_url`` like Telnyx does, and sends Ed25519-signed webhooks
to ``webhook_url`` as Telnyx may: out of order and each one twice. Destination numbers pick the
outcome (0002 user_busy, 0003 receiver_no_answer, 0004 destination_invalid, 0005 a failure without
a reason, 0007 receiver_call_dropped). ``POST /_control`` sets ``reject_next`` (answer 429 that many
times), ``lose_answer_next`` (take the fax, then answer 503 as if the answer were lost, that many times),
``drop_webhooks`` and ``chaos``; ``GET /_control/log`` shows what happened.

Inbound: ``POST /_control/inbound`` (``from``, ``to``, ``webhook_url``, ``document`` in base64, ``content_type``,
optional ``fax_id``, ``partial``, ``media_url``) plays a fax arriving at ``to``: the document is served at
``GET /media/{fax_id}`` (and ``/media-redirect/{fax_id}`` answers 302 to it), and the webhooks
``fax.media.processing.started`` and ``fax.received`` are sent out of order (received first), each twice, the
two ``fax.received`` at the same time. The answer lists the webhook answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pypdfium2
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

API_KEY = sys.argv[2] if len(sys.argv) > 2 else "test-key"
PRIVATE_KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sys.argv[3] if len(sys.argv) > 3 else "11" * 32))
OUTCOMES = {
    "0002": "user_busy",
    "0003": "receiver_no_answer",
    "0004": "destination_invalid",
    "0005": None,
    "0007": "receiver_call_dropped",
}

app = FastAPI()
faxes: dict[str, dict[str, Any]] = {}
control: dict[str, Any] = {"reject_next": 0, "lose_answer_next": 0, "drop_webhooks": False, "chaos": True}
log: dict[str, list[Any]] = {"media_fetches": [], "webhooks": [], "submissions": [], "inbound_fetches": []}
media: dict[str, tuple[bytes, str]] = {}


def stamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"errors": [{"title": "error", "detail": detail}]}, status_code=status)


def authorized(request: Request) -> bool:
    return request.headers.get("authorization") == f"Bearer {API_KEY}"


@app.get("/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/_control")
async def set_control(request: Request) -> dict[str, Any]:
    control.update(await request.json())
    return control


@app.get("/_control/log")
async def get_log() -> dict[str, Any]:
    return {**log, "faxes": list(faxes.values())}


@app.post("/v2/faxes")
async def send_fax(request: Request) -> JSONResponse:
    if not authorized(request):
        return error(401, "Authentication failed")
    body = await request.json()
    log["submissions"].append(body)
    if control["reject_next"] > 0:
        control["reject_next"] -= 1
        return error(429, "Too many faxes in flight")
    missing = [f for f in ("connection_id", "to", "from", "media_url") if not body.get(f)]
    if missing:
        return error(422, f"missing {', '.join(missing)}")
    fax = {
        "record_type": "fax",
        "id": str(uuid.uuid4()),
        "direction": "outbound",
        "status": "queued",
        "to": body["to"],
        "from": body["from"],
        "connection_id": body["connection_id"],
        "quality": body.get("quality", "high"),
        "client_state": body.get("client_state"),
        "media_url": body["media_url"],
        "webhook_url": body.get("webhook_url"),
        "created_at": stamp(),
        "updated_at": stamp(),
    }
    faxes[fax["id"]] = fax
    asyncio.get_running_loop().create_task(run_fax(fax))
    if control["lose_answer_next"] > 0:  # the fax is taken, but the caller never learns it
        control["lose_answer_next"] -= 1
        return error(503, "upstream timed out")
    return JSONResponse({"data": fax}, status_code=202)


@app.get("/v2/faxes/{fax_id}")
async def view_fax(request: Request, fax_id: str) -> JSONResponse:
    if not authorized(request):
        return error(401, "Authentication failed")
    if fax_id not in faxes:
        return error(404, "Fax does not exist")
    return JSONResponse({"data": faxes[fax_id]})


@app.get("/v2/faxes")
async def list_faxes(request: Request) -> JSONResponse:
    if not authorized(request):
        return error(401, "Authentication failed")
    params = request.query_params
    found = list(faxes.values())
    if params.get("filter[to][eq]"):
        found = [f for f in found if f["to"] == params["filter[to][eq]"]]
    if params.get("filter[direction][eq]"):
        found = [f for f in found if f["direction"] == params["filter[direction][eq]"]]
    if params.get("filter[created_at][gte]"):
        since = datetime.fromisoformat(params["filter[created_at][gte]"].replace("Z", "+00:00"))
        found = [f for f in found if datetime.fromisoformat(f["created_at"].replace("Z", "+00:00")) >= since]
    size, number = int(params.get("page[size]", "20")), int(params.get("page[number]", "1"))
    return JSONResponse({"data": found[(number - 1) * size : number * size]})


@app.get("/media/{fax_id}")
async def get_media(fax_id: str) -> Response:
    log["inbound_fetches"].append(fax_id)
    if fax_id not in media:
        return error(404, "no such media")
    content, content_type = media[fax_id]
    return Response(content, media_type=content_type)


@app.get("/media-redirect/{fax_id}")
async def redirect_media(fax_id: str) -> Response:
    return Response(status_code=302, headers={"location": f"/media/{fax_id}"})


@app.post("/_control/inbound")
async def inbound_fax(request: Request) -> dict[str, Any]:
    body = await request.json()
    fax_id = body.get("fax_id") or str(uuid.uuid4())
    content_type = body.get("content_type", "application/pdf")
    document = base64.b64decode(body["document"])
    media[fax_id] = (document, content_type)
    base = str(request.base_url).rstrip("/")
    payload = {
        "fax_id": fax_id,
        "connection_id": "fax-app-1",
        "direction": "inbound",
        "from": body["from"],
        "to": body["to"],
        "user_id": "user-1",
    }
    received = {
        **payload,
        "status": "received",
        "media_url": body.get("media_url") or f"{base}/media/{fax_id}",
        "page_count": body.get("pages", 1),
        "partial_content": bool(body.get("partial", False)),
    }
    processing = envelope_of("fax.media.processing.started", {**payload, "status": "media.processing"})
    announced = envelope_of("fax.received", received)
    answers = []
    async with httpx.AsyncClient(timeout=30) as http:
        url = body["webhook_url"]
        first = await asyncio.gather(post_webhook(http, url, announced), post_webhook(http, url, announced))
        answers += first
        answers.append(await post_webhook(http, url, processing))
        answers.append(await post_webhook(http, url, processing))
        answers.append(await post_webhook(http, url, envelope_of("fax.received", received)))  # a new event id
    return {"fax_id": fax_id, "answers": answers}


def envelope_of(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": {
            "event_type": event_type,
            "id": str(uuid.uuid4()),
            "occurred_at": stamp(),
            "record_type": "event",
            "payload": payload,
        },
        "meta": {"attempt": 1},
    }


async def run_fax(fax: dict[str, Any]) -> None:
    """Fetch the media, then report the fax's life by webhook (and keep GET /v2/faxes/{id} current)."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(fax["media_url"])
        log["media_fetches"].append({"url": fax["media_url"], "status": response.status_code})
        events: list[tuple[str, dict[str, Any]]] = [("fax.queued", {"status": "queued"})]
        if response.status_code != 200 or not response.content.startswith(b"%PDF"):
            events.append(("fax.failed", {"status": "failed", "failure_reason": "file_download_failed"}))
        else:
            pages = len(pypdfium2.PdfDocument(response.content))
            events.append(("fax.media.processed", {"status": "media.processed"}))
            events.append(("fax.sending.started", {"status": "sending"}))
            suffix = fax["to"][-4:]
            if suffix in OUTCOMES:
                events.append(("fax.failed", {"status": "failed", "failure_reason": OUTCOMES[suffix]}))
            else:
                events.append(("fax.delivered", {"status": "delivered", "page_count": pages, "call_duration_secs": 30}))
        for _, change in events:
            await asyncio.sleep(0.05)
            fax.update(change, updated_at=stamp())
        if control["drop_webhooks"] or not fax.get("webhook_url"):
            return
        deliveries = [envelope(fax, event_type, change) for event_type, change in events]
        if control["chaos"]:
            deliveries[-1], deliveries[-2] = deliveries[-2], deliveries[-1]  # the result before "sending"
            deliveries = [d for d in deliveries for _ in range(2)]  # and everything twice
        for body in deliveries:
            await post_webhook(http, fax["webhook_url"], body)


def envelope(fax: dict[str, Any], event_type: str, change: dict[str, Any]) -> dict[str, Any]:
    payload = {
        "fax_id": fax["id"],
        "connection_id": fax["connection_id"],
        "direction": "outbound",
        "from": fax["from"],
        "to": fax["to"],
        "client_state": fax["client_state"],
        **change,
    }
    return {
        "data": {
            "event_type": event_type,
            "id": str(uuid.uuid4()),
            "occurred_at": stamp(),
            "record_type": "event",
            "payload": payload,
        }
    }


async def post_webhook(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    timestamp = str(int(time.time()))
    signature = base64.b64encode(PRIVATE_KEY.sign(timestamp.encode() + b"|" + raw)).decode()
    headers = {"content-type": "application/json", "telnyx-signature-ed25519": signature, "telnyx-timestamp": timestamp}
    response = await http.post(url, content=raw, headers=headers)
    entry = {"event_type": body["data"]["event_type"], "status": response.status_code, "answer": response.text}
    log["webhooks"].append(entry)
    return entry


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
