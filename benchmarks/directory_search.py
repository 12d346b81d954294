"""A name search over many Patients, with and without its index.

Starts the embedded database, stores ``--patients`` Patients built by the store itself (so their search keys,
``_fhirfax.keys.name.p`` included, are the real ones), and runs the query the server runs for
``GET /fhir/Patient?name=<prefix>&_count=20`` (filter, default order, page size): first with the
``search_name`` index, then after dropping it. For each it reports the median time of the query and what
``explain`` says the database read (index keys and documents examined). ``:contains``, which no index can
serve, is measured too, and so is the first start-up after an upgrade: ``--upgrade`` Patients stored
without search keys (as an earlier release stored them) get theirs.

    python benchmarks/directory_search.py --patients 50000 --repeats 30

Writes ``benchmarks/results/directory_search.json`` and prints a markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from fhir_fax.embedded import EmbeddedDatabase
from fhir_fax.fhir.models import SUPPORTED_TYPES, now
from fhir_fax.fhir.search import parse_search
from fhir_fax.fhir.search_params import default_registry
from fhir_fax.fhir.store import ResourceStore

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES = [
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann",
    "García", "Martínez", "López", "González", "Smith", "Johnson", "Williams", "Brown", "Jones", "Nguyen",
]  # fmt: skip
GIVENS = ["Anna", "Hans", "Jürgen", "Zoë", "José", "Maria", "Elena", "James", "Ava", "Noah", "Liam", "Emma"]


def patient(rng: random.Random, n: int) -> dict[str, Any]:
    # A varied family name: a common stem plus a suffix, so that a 3-letter prefix matches about 5%.
    family = rng.choice(FAMILIES) + rng.choice(["", "-Lang", "son", "er", "ová", "i"])
    return {
        "resourceType": "Patient",
        "name": [{"family": family, "given": rng.sample(GIVENS, k=2)}],
        "birthDate": f"{rng.randrange(1930, 2024)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        "gender": rng.choice(["male", "female"]),
        "telecom": [{"system": "phone", "value": f"+1617555{n:07d}"}],
        "identifier": [{"system": "urn:mrn", "value": f"mrn-{n}"}],
    }


async def fill(database: Any, store: ResourceStore, count: int) -> float:
    rng = random.Random(20261130)
    started = time.perf_counter()
    batch = []
    for n in range(count):
        batch.append(store._document(patient(rng, n), f"pat-{n:07d}", 1, "POST", now()))
        if len(batch) == 2_000:
            await database["Patient"].insert_many(batch, ordered=False)
            batch = []
    if batch:
        await database["Patient"].insert_many(batch, ordered=False)
    return time.perf_counter() - started


async def upgrade(client: Any, count: int) -> float:
    """Seconds the first start-up takes to give ``count`` Patients stored without keys (an earlier release) theirs."""
    database = client["upgrade"]
    await database["Patient"].insert_many(
        [
            ResourceStore(database)._document(patient(random.Random(n), n), f"old-{n}", 1, "POST", now())
            for n in range(count)
        ]
    )
    registry = default_registry()
    started = time.perf_counter()
    await registry.ensure_indexes(database)
    return time.perf_counter() - started


async def measure(database: Any, params: list[tuple[str, str]], repeats: int) -> dict[str, Any]:
    """The server's query for ``params`` (page of 20, default order): median time and what it examined."""
    query = parse_search("Patient", params, default_registry(), default_count=20, max_count=500)
    collection = database["Patient"]

    def cursor() -> Any:
        return collection.find(query.filter).sort(*query.sort).limit(query.count + 1)

    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        found = await cursor().to_list(None)
        samples.append((time.perf_counter() - started) * 1000)
    plan = await cursor().explain()
    stats = plan.get("executionStats", {})
    return {
        "query": "&".join(f"{k}={v}" for k, v in params),
        "p50_ms": round(statistics.median(samples), 2),
        "returned": len(found),
        "matches": await collection.count_documents(query.filter),
        "keys_examined": stats.get("totalKeysExamined"),
        "docs_examined": stats.get("totalDocsExamined"),
        "plan": "IXSCAN" if "IXSCAN" in str(plan) else "COLLSCAN",
    }


async def run(count: int, repeats: int, upgraded: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fhir-fax-bench-"))
    server = EmbeddedDatabase(work)
    uri = server.start()
    client = AsyncMongoClient(uri, tz_aware=True)
    database = client["bench"]
    registry = default_registry()
    store = ResourceStore(database, registry.indexer)
    try:
        await store.ensure_indexes(SUPPORTED_TYPES)
        await registry.ensure_indexes(database)  # as at start-up: Patients then arrive into the indexes
        load = await fill(database, store, count)
        sample = await database["Patient"].find_one({}, {"_fhirfax.keys": 1})
        keys = sample["_fhirfax"]["keys"]
        rows = []
        for params in ([("name", "mül")], [("family", "Schmi")], [("name", "zoe")], [("name:contains", "ová")]):
            rows.append({"index": True, **await measure(database, params, repeats)})
        upgrade_seconds = await upgrade(client, upgraded) if upgraded else None
        await database["Patient"].drop_index("search_name")
        await database["Patient"].drop_index("search_family")
        for params in ([("name", "mül")], [("family", "Schmi")]):
            rows.append({"index": False, **await measure(database, params, repeats)})
    finally:
        await client.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "patients": count,
        "load_seconds": round(load, 1),
        "name_prefix_keys_per_patient": len(keys["name"]["p"]),
        "upgraded_patients": upgraded,
        "upgrade_seconds": None if upgrade_seconds is None else round(upgrade_seconds, 1),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--upgrade", type=int, default=5_000, help="Patients stored without keys, then indexed")
    args = parser.parse_args()
    result = asyncio.run(run(args.patients, args.repeats, args.upgrade))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "directory_search.json").write_text(json.dumps({"machine": machine, **result}, indent=2))
    print(f"\nMachine: {machine}; {result['patients']:,} Patients (stored in {result['load_seconds']} s, "
          f"{result['name_prefix_keys_per_patient']} name prefix keys per Patient)\n")  # fmt: skip
    print("| query | index | plan | matches | keys examined | docs examined | p50 (ms) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in result["rows"]:
        cells = [row["query"], "yes" if row["index"] else "dropped", row["plan"], row["matches"],
                 row["keys_examined"], row["docs_examined"], row["p50_ms"]]  # fmt: skip
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    if result["upgrade_seconds"] is not None:
        print(f"\nFirst start after an upgrade: keys for {result['upgraded_patients']:,} Patients stored without them "
              f"(indexes first, then the keys) in {result['upgrade_seconds']} s")  # fmt: skip


if __name__ == "__main__":
    main()
