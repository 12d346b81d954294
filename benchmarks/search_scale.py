"""Per-patient search latency as the number of stored Communications grows.

Starts the embedded database and a real ``fhir-fax serve`` process, fills the database to
each size (documents built by the store itself, so their search keys are the real ones),
then times ``GET /fhir/Communication?patient=X&_count=20`` over loopback HTTP. The
patient always has the same 50 faxes, so only the size of the collection changes.

    python benchmarks/search_scale.py --sizes 10000,100000,1000000 --requests 300

Writes ``benchmarks/results/search_scale.json`` and prints a markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from fhir_fax.embedded import EmbeddedDatabase, free_port
from fhir_fax.fhir.models import SUPPORTED_TYPES, now
from fhir_fax.fhir.search_params import default_registry
from fhir_fax.fhir.store import ResourceStore

from serving import wait_until_serving

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_PATIENT = "bench-target"
TARGET_FAXES = 50
OTHER_PATIENTS = 5_000
ADMIN = ("bench-admin", "bench-admin-secret")


def template(store: ResourceStore, patient: str) -> dict[str, Any]:
    communication = {
        "resourceType": "Communication",
        "status": "completed",
        "subject": {"reference": f"Patient/{patient}"},
        "recipient": [{"reference": "Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c"}],
        "sender": {"reference": "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"},
        "sent": "2026-11-24T10:00:00.000Z",
        "medium": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode", "code": "FAXWRIT"}]}
        ],
        "payload": [{"contentAttachment": {"url": "z3://fixtures/referral-letter.pdf"}}],
        "identifier": [{"system": "https://identifiers.oystehr.com/fax", "value": str(uuid.uuid4())}],
    }
    return store._document(communication, str(uuid.uuid4()), 1, "POST", now())


async def fill(database: Any, store: ResourceStore, current: int, size: int, rng_seed: int) -> None:
    """Add Communications until the collection holds ``size``; the target's 50 come first."""
    import random

    rng = random.Random(rng_seed)
    batch: list[dict[str, Any]] = []
    base_other = template(store, "p-0")
    base_target = template(store, TARGET_PATIENT)
    for n in range(current, size):
        base = base_target if n < TARGET_FAXES else base_other
        patient = TARGET_PATIENT if n < TARGET_FAXES else f"p-{rng.randrange(OTHER_PATIENTS)}"
        document = json.loads(json.dumps(base, default=str))
        document["_id"] = document["id"] = f"c-{n:08d}"
        document["subject"] = {"reference": f"Patient/{patient}"}
        document["_fhirfax"] = dict(base["_fhirfax"])
        document["_fhirfax"]["lastUpdated"] = base["_fhirfax"]["lastUpdated"]
        keys = dict(base["_fhirfax"]["keys"])
        keys["subject"] = keys["patient"] = [{"r": f"Patient/{patient}", "i": patient}]
        document["_fhirfax"]["keys"] = keys
        document["_fhirfax"]["sort"] = base["_fhirfax"]["sort"]
        batch.append(document)
        if len(batch) == 2_000:
            await database["Communication"].insert_many(batch, ordered=False)
            batch = []
    if batch:
        await database["Communication"].insert_many(batch, ordered=False)


def start_server(uri: str, name: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "FHIR_FAX_MONGODB_URI": uri,
        "FHIR_FAX_DATABASE_NAME": name,
        "FHIR_FAX_BOOTSTRAP_CLIENT_ID": ADMIN[0],
        "FHIR_FAX_BOOTSTRAP_CLIENT_SECRET": ADMIN[1],
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fhir_fax.cli", "serve", "--port", str(port), "--log-level", "warning"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, url, log)
    return process, url


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(url: str, requests: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        grant = {"grant_type": "client_credentials", "client_id": ADMIN[0], "client_secret": ADMIN[1]}
        token = (await http.post("/oauth/token", data=grant)).json()["access_token"]
        http.headers["authorization"] = f"Bearer {token}"
        query = {"patient": TARGET_PATIENT, "_count": "20"}
        for _ in range(20):  # warm-up
            await http.get("/fhir/Communication", params=query)
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            response = await http.get("/fhir/Communication", params=query)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200 and len(response.json()["entry"]) == 20
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(percentile(samples, 0.99), 2),
        "mean_ms": round(statistics.fmean(samples), 2),
    }


async def run(sizes: list[int], requests: int) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="fhir-fax-bench-"))
    database_server = EmbeddedDatabase(work)
    uri = database_server.start()
    client = AsyncMongoClient(uri, tz_aware=True)
    name = "bench"
    database = client[name]
    registry = default_registry()
    store = ResourceStore(database, registry.indexer)
    await store.ensure_indexes(SUPPORTED_TYPES)
    await registry.ensure_indexes(database)
    rows, stored = [], 0
    try:
        for size in sizes:
            started = time.perf_counter()
            await fill(database, store, stored, size, rng_seed=size)
            load_seconds = time.perf_counter() - started
            stored = size
            process, url = start_server(uri, name, work / f"serve-{size}.log")
            try:
                result = await measure(url, requests)
            finally:
                process.terminate()
                process.wait(timeout=30)
            row = {"communications": size, **result, "load_seconds": round(load_seconds, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        await client.close()
        database_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows = asyncio.run(run(sizes, args.requests))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search_scale.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"\nMachine: {machine}\n")
    print("| Communications | p50 (ms) | p99 (ms) | mean (ms) | load time (s) |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = [f"{row['communications']:,}", row["p50_ms"], row["p99_ms"], row["mean_ms"], row["load_seconds"]]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    if len(rows) > 1:
        print(
            f"\np50 at {rows[-1]['communications']:,} / p50 at {rows[0]['communications']:,}: "
            f"{rows[-1]['p50_ms'] / rows[0]['p50_ms']:.2f}x"
        )


if __name__ == "__main__":
    main()
