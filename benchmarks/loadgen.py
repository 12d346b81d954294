"""The load generator: runs one benchmark cell (a scenario at one concurrency) and prints its figures as JSON.

Runs in its own process so that its CPU is not the server's. ``concurrency`` tasks share one HTTP/1.1
keep-alive connection pool; each task sends its next request as soon as the previous one answered
(closed loop), until the request budget or the time budget is spent. Every answer's status is checked:
a benchmark that measures errors measures nothing.

    echo '{"scenario": "read", "url": ..., "concurrency": 8, ...}' | python benchmarks/loadgen.py
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo import AsyncMongoClient

MEDIA = "z3://bench/referral-letter.pdf"
SENDER = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"
RECIPIENT = "Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c"
PATIENT = "Patient/james-oneil"  # the faxes sent under load are about James...
SEARCHED = "Patient/maria-lopez"  # ...and the search looks for Maria's 60, prepared before the run
TELNYX_EVENTS = ("fax.media.processed", "fax.sending.started", "fax.delivered")

Step = Callable[[int], Awaitable[None]]


class UnexpectedAnswer(Exception):
    pass


def expect(response: httpx.Response, status: int = 200) -> httpx.Response:
    if response.status_code != status:
        raise UnexpectedAnswer(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                               f"{response.text[:300]}")  # fmt: skip
    return response


def sdk_body(patient: str = PATIENT) -> dict[str, Any]:
    return {"media": MEDIA, "quality": "standard", "sender": SENDER, "recipient": RECIPIENT, "patient": patient}


def parameters_body() -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "media", "valueUrl": MEDIA},
            {"name": "quality", "valueCode": "standard"},
            {"name": "sender", "valueReference": {"reference": SENDER}},
            {"name": "recipient", "valueReference": {"reference": RECIPIENT}},
            {"name": "patient", "valueReference": {"reference": PATIENT}},
        ],
    }


def telnyx_fax_id(fax_id: str) -> str:
    """The id Telnyx gave attempt 1 of ``fax_id`` in this benchmark (``load.py`` records it as the hand-over)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"telnyx:{fax_id}"))


def telnyx_webhook(private_key: Ed25519PrivateKey, fax_id: str, event_type: str) -> tuple[bytes, dict[str, str]]:
    """A signed Telnyx fax webhook for attempt 1 of ``fax_id``, as Telnyx would send it."""
    envelope = {
        "data": {
            "id": str(uuid.uuid4()),
            "event_type": event_type,
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            "payload": {
                "fax_id": telnyx_fax_id(fax_id),
                "client_state": base64.b64encode(f"{fax_id}:1".encode()).decode(),
                "status": event_type.removeprefix("fax."),
                "page_count": 1,
            },
        }
    }
    raw = json.dumps(envelope).encode()
    stamp = str(int(time.time()))
    signature = base64.b64encode(private_key.sign(stamp.encode() + b"|" + raw)).decode()
    return raw, {"telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp, "content-type": "application/json"}


def http_steps(cell: dict[str, Any], http: httpx.AsyncClient) -> Step:
    """The request one step of ``cell["scenario"]`` makes."""
    scenario, ids = cell["scenario"], cell.get("ids") or []
    fhir = {"content-type": "application/fhir+json"}

    async def baseline_insert(i: int) -> None:
        expect(await http.post("/bench/insert", json={"n": i, "note": "baseline"}))

    async def baseline_read(i: int) -> None:
        expect(await http.get(f"/bench/read/{ids[i % len(ids)]}"))

    async def sdk_send(i: int) -> None:
        expect(await http.post("/fax/v1/send", json=sdk_body()))

    async def fhir_send(i: int) -> None:
        expect(await http.post("/fhir/Communication/$send-fax", json=parameters_body(), headers=fhir))

    async def read(i: int) -> None:
        expect(await http.get(f"/fhir/Communication/{ids[i % len(ids)]}"))

    async def search(i: int) -> None:
        found = expect(await http.get("/fhir/Communication", params={"patient": SEARCHED, "_count": "20"})).json()
        if len(found.get("entry", [])) != 20:
            raise UnexpectedAnswer(f"search returned {len(found.get('entry', []))} entries, not 20")

    secret = cell.get("telnyx_private_key")
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret)) if secret else None

    async def status_events(i: int) -> None:
        """One fax's three carrier events, in order: each is one request (one status change)."""
        assert key is not None
        fax_id = ids[i]
        for event_type in TELNYX_EVENTS:
            raw, headers = telnyx_webhook(key, fax_id, event_type)
            answer = expect(await http.post("/fax/webhooks/telnyx", content=raw, headers=headers)).json()
            if answer.get("status") != "applied":
                raise UnexpectedAnswer(f"{event_type} for {fax_id} was {answer}")

    return locals()[scenario]


async def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    concurrency, budget, seconds = cell["concurrency"], cell["requests"], cell["seconds"]
    per_step = 3 if cell["scenario"] == "status_events" else 1
    latencies: list[float] = []
    steps_started = 0
    started = time.perf_counter()
    deadline = started + seconds
    client: Any = None
    if cell["scenario"].startswith("driver_"):
        client = AsyncMongoClient(cell["mongodb_uri"], tz_aware=True, w="majority", journal=True)
        step = driver_steps(cell, client[cell["database"]])
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"authorization": f"Bearer {cell['token']}"}
        client = httpx.AsyncClient(base_url=cell["url"], headers=headers, limits=limits, timeout=60)
        step = http_steps(cell, client)
    if cell["scenario"] == "status_events":
        budget = min(budget, len(cell["ids"]))

    async def worker() -> None:
        nonlocal steps_started
        while steps_started < budget and time.perf_counter() < deadline:
            i = steps_started
            steps_started += 1
            begin = time.perf_counter()
            await step(i)
            latencies.append((time.perf_counter() - begin) / per_step)

    cpu_before = os.times()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu_after = os.times()
    if isinstance(client, httpx.AsyncClient):
        await client.aclose()
    else:
        await client.close()
    requests = len(latencies) * per_step
    return {
        "requests": requests,
        "seconds": elapsed,
        "latencies_ms": [round(x * 1000, 3) for x in latencies],
        "loadgen_cpu_s": (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system),
    }


def driver_steps(cell: dict[str, Any], database: Any) -> Step:
    """Baseline (c): the driver alone, the same documents as the bare endpoints, no HTTP."""
    ids = cell.get("ids") or []
    collection = database["bench_driver"]

    async def driver_insert(i: int) -> None:
        await collection.insert_one({"_id": str(uuid.uuid4()), "n": i, "note": "baseline"})

    async def driver_read(i: int) -> None:
        if await database["bench_baseline"].find_one({"_id": ids[i % len(ids)]}) is None:
            raise UnexpectedAnswer("driver read found nothing")

    return locals()[cell["scenario"]]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run_cell(json.load(sys.stdin)))))
