"""A local emulator of Telnyx Programmable Fax v2, built from its documented API, for the tests.

Run as ``python telnyx_emulator.py PORT API_KEY PRIVATE_KEY_HEX``. It implements POST/GET ``/v2/faxes``
and GET ``/v2/faxes/{id}``, fetches ``media_url`` like Telnyx does, and sends Ed25519-signed webhooks
to ``webhook_url`` as Telnyx may: out of order and each one twice. Destination numbers pick the
outcome (0002 user_busy, 0003 receiver_no_answer, 0004 destination_invalid, 0005 a failure without
a reason, 0007 receiver_call_dropped). ``POST /_control`` sets ``reject_next`` (answer 429 that many
times), ``lose_answer_next`` (take the fax, then answer 503 as if the answer were lost, that many times),
``drop_webhooks`` and ``chaos``; ``GET /_control/log`` shows what happened.
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
from fastapi.responses import JSONResponse

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
log: dict[str, list[Any]] = {"media_fetches": [], "webhooks": [], "submissions": []}


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


async def post_webhook(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    timestamp = str(int(time.time()))
    signature = base64.b64encode(PRIVATE_KEY.sign(timestamp.encode() + b"|" + raw)).decode()
    headers = {"content-type": "application/json", "telnyx-signature-ed25519": signature, "telnyx-timestamp": timestamp}
    response = await http.post(url, content=raw, headers=headers)
    log["webhooks"].append(
        {"event_type": body["data"]["event_type"], "status": response.status_code, "answer": response.text}
    )


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
