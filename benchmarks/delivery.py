"""Delivery at scale, in one command: drain, idle cost against history, send throughput beside the worker,
database operations per send and per delivered fax, and RSS over a soak.

Starts the embedded database in its own process and the production app with its delivery worker
(``bench_server.py``: what ``fhir-fax serve`` runs, plus the bare baseline endpoints) in another, the
simulator as the carrier. Sections (``--sections``, all by default):

- ``ops``: database operations (the database's own ``serverStatus.opcounters``, all kinds summed) per send,
  and per delivered fax including its send; the idle rate (driver heartbeats, the worker's idle queries)
  is measured first and subtracted. Where they go, by command and collection, from the server's own
  command log. Twice: every fax sending one upload, and every fax its own upload.
- ``drain``: N faxes accepted as fast as the API takes them (concurrency 32), simulator at 1000x; the time
  until every one is DELIVERED against the time it took to accept them.
- ``throughput``: ``POST /fax/v1/send`` with the worker running (simulator at ``--speed``) beside the bare
  insert endpoint, concurrency 32, p50/p99 (``loadgen.py``).
- ``history``: finished faxes inserted directly (jobs and the simulator's records, shaped as the product
  writes them) up to each size of ``--history``; for each, the database's CPU while the server is idle,
  and the send-to-DELIVERED time of a few faxes.
- ``soak``: mixed sends and reads with deliveries for ``--soak`` seconds; the server's RSS sampled.

The machine is shared: run it when it is quiet, and read ratios measured in one run rather than absolute
figures. Writes ``benchmarks/results/delivery.json``. Not a test; stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from load import Process, machine, percentile
from pymongo import AsyncMongoClient, MongoClient

from fhir_fax.embedded import EmbeddedDatabase, free_port
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from loadgen import sdk_body
from serving import wait_until_serving

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PDF = HERE.parent / "fhir_fax" / "data" / "fixtures" / "referral-letter.pdf"
ADMIN = ("bench-admin", "bench-admin-secret")
SENDER_NUMBER = "+12223334444"
DATABASE = "bench"
SECTIONS = ("ops", "drain", "throughput", "history", "soak")


class Server:
    """The embedded database and the app (worker on, simulator carrier), each in its own process."""

    def __init__(self, work: Path, speed: float, extra: dict[str, str] | None = None, data: Path | None = None) -> None:
        self.work = work
        self.speed = speed
        self.extra = extra or {}
        self.database_server = EmbeddedDatabase(data or work / "data")
        self.database_server.startup_timeout = 600  # a kept million-fax database loads for a while
        self.app: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""
        self.started_in = 0.0  # seconds from starting the app until it served

    def start_database(self) -> None:
        self.uri = self.database_server.start()
        assert self.database_server.process is not None
        self.database_process = Process(self.database_server.process.pid)

    def start_app(self) -> None:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_FAX_")},
            "FHIR_FAX_MONGODB_URI": self.uri,
            "FHIR_FAX_DATABASE_NAME": DATABASE,
            "FHIR_FAX_PORT": str(port),
            "FHIR_FAX_LOAD_FIXTURES": "true",
            "FHIR_FAX_WORKER_ENABLED": "true",
            "FHIR_FAX_CARRIER": "simulator",
            "FHIR_FAX_SIMULATOR_SPEED": str(self.speed),
            "FHIR_FAX_CARRIER_FAX_NUMBER": SENDER_NUMBER,
            "FHIR_FAX_BOOTSTRAP_CLIENT_ID": ADMIN[0],
            "FHIR_FAX_BOOTSTRAP_CLIENT_SECRET": ADMIN[1],
            "FHIR_FAX_TOKEN_LIFETIME_SECONDS": "86400",
            "BENCH_OPERATION_PROFILE": "1",
            **self.extra,
        }
        log = self.work / "server.log"
        with open(log, "ab") as out:
            self.app = subprocess.Popen(
                [sys.executable, str(HERE / "bench_server.py")], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        self.url = f"http://127.0.0.1:{port}"
        starting = time.perf_counter()
        wait_until_serving(self.app, self.url, log, seconds=1800)  # a start on a kept million-fax database is slow
        self.started_in = time.perf_counter() - starting
        self.process = Process(self.app.pid)
        answer = httpx.post(
            f"{self.url}/oauth/token",
            data={"grant_type": "client_credentials", "client_id": ADMIN[0], "client_secret": ADMIN[1]},
        )
        answer.raise_for_status()
        self.token = answer.json()["access_token"]
        headers = {"authorization": f"Bearer {self.token}"}
        httpx.post(f"{self.url}/fax/v1/onboard", json={"faxNumber": SENDER_NUMBER}, headers=headers).raise_for_status()

    def upload_document(self, copies: int = 0) -> list[str]:
        """The letter every send faxes, plus ``copies`` uploads of it under keys of their own (their z3 URLs)."""
        keys = [f"letters/letter-{n}.pdf" for n in range(copies)]

        async def upload() -> None:
            client = AsyncMongoClient(self.uri, tz_aware=True)
            store = Z3Store(client[DATABASE])
            for key in ["referral-letter.pdf", *keys]:
                await store.put(Z3Location("bench", key), PDF.read_bytes(), "application/pdf")
            await client.close()

        asyncio.run(upload())
        return [f"z3://bench/{key}" for key in keys]

    def stop_app(self) -> None:
        if self.app is not None and self.app.poll() is None:
            self.app.terminate()
            try:
                self.app.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.app.kill()
        self.app = None

    def stop(self) -> None:
        self.stop_app()
        self.database_server.stop()

    # -- measuring --------------------------------------------------------------------------------------

    def operations(self) -> int:
        """Every operation the database has counted so far (``serverStatus.opcounters``, all kinds)."""
        return sum(self.operations_by_kind().values())

    def operations_by_kind(self) -> dict[str, int]:
        """``serverStatus.opcounters`` as counted so far, by kind (insert, query, update, delete, getmore, command)."""
        with MongoClient(self.uri) as client:
            counters = client.admin.command("serverStatus")["opcounters"]
        return {k: int(v) for k, v in counters.items() if isinstance(v, int)}

    def operation_profile(self, per: int) -> dict[str, float]:
        """The server's own commands since the last call, by command and collection, per ``per`` faxes."""
        counted = httpx.post(f"{self.url}/bench/operations").json()
        return {name: round(n / per, 2) for name, n in counted.items() if n / per >= 0.05}

    def count(self, collection: str, query: dict[str, Any]) -> int:
        with MongoClient(self.uri) as client:
            return int(client[DATABASE][collection].count_documents(query))

    def send_many(self, n: int, concurrency: int = 32, media: list[str] | None = None) -> tuple[float, list[str]]:
        """Send ``n`` faxes as fast as the API takes them; (seconds, Communication ids). ``media``: a document of
        its own for each fax (a fresh upload), instead of the one letter."""

        async def run() -> tuple[float, list[str]]:
            ids: list[str] = []
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            headers = {"authorization": f"Bearer {self.token}"}
            async with httpx.AsyncClient(base_url=self.url, headers=headers, limits=limits, timeout=120) as http:
                remaining = list(range(n))

                async def sender() -> None:
                    while remaining:
                        index = remaining.pop()
                        body = sdk_body() if media is None else {**sdk_body(), "media": media[index]}
                        answer = await http.post("/fax/v1/send", json=body)
                        answer.raise_for_status()
                        ids.append(answer.json()["communicationResource"]["id"])

                started = time.perf_counter()
                await asyncio.gather(*(sender() for _ in range(concurrency)))
                return time.perf_counter() - started, ids

        return asyncio.run(run())

    def wait_delivered(self, ids: list[str], limit: float) -> float:
        """Seconds from now until every job of ``ids`` is finished (or ``limit``).

        Asks only about those not yet seen finished, four times a second: the measurement itself must not
        load the database it measures.
        """
        started = time.perf_counter()
        remaining = set(ids)
        with MongoClient(self.uri) as client:
            jobs = client[DATABASE].fax_jobs
            while remaining and time.perf_counter() - started < limit:
                query = {"communication_id": {"$in": sorted(remaining)}, "state": "done"}
                remaining -= {j["communication_id"] for j in jobs.find(query, {"communication_id": 1})}
                if remaining:
                    time.sleep(0.25)
        return time.perf_counter() - started

    def idle_database_cpu(self, seconds: float) -> float:
        """Percent of one core the database used over ``seconds`` while nothing was sent."""
        before = self.database_process.cpu_seconds()
        time.sleep(seconds)
        return (self.database_process.cpu_seconds() - before) / seconds * 100


# -- sections -------------------------------------------------------------------------------------------


def by_kind(
    before: dict[str, int], after: dict[str, int], idle: dict[str, float], seconds: float, n: int
) -> dict[str, float]:
    """Operations of each kind per fax between two readings, each kind's idle rate subtracted."""
    return {
        kind: round((after.get(kind, 0) - before.get(kind, 0) - idle.get(kind, 0.0) * seconds) / n, 2)
        for kind in sorted(after)
    }


def idle_rates(server: Server, seconds: float = 5.0) -> dict[str, float]:
    """Operations a second of each kind while nothing is sent (driver heartbeats, the idle polls)."""
    time.sleep(2)
    before, started = server.operations_by_kind(), time.perf_counter()
    time.sleep(seconds)
    after, took = server.operations_by_kind(), time.perf_counter() - started
    return {kind: (after[kind] - before.get(kind, 0)) / took for kind in after}


def section_ops(server: Server, n: int, work: Path) -> dict[str, Any]:
    """Per send: a second server without a worker (so no delivery runs meanwhile). Per delivered fax: this one.

    Measured twice: every fax sending the same upload (the figure the targets are about), and every fax its own
    upload (what a clinic faxing each letter once pays: inspecting it, pinning it, rendering it and keeping the
    rendering).
    """
    report: dict[str, Any] = {}
    for label, copies in (("same_document", 0), ("own_document", n)):
        quiet = Server(work / f"sends-only-{label}", server.speed, {"FHIR_FAX_WORKER_ENABLED": "false"})
        try:
            quiet.start_database()
            quiet.start_app()
            media = quiet.upload_document(copies) or None
            idle = idle_rates(quiet)
            before, started = quiet.operations_by_kind(), time.perf_counter()
            quiet.operation_profile(n)
            quiet.send_many(n, concurrency=4, media=media)
            send_kinds = by_kind(before, quiet.operations_by_kind(), idle, time.perf_counter() - started, n)
            send_profile = quiet.operation_profile(n)
        finally:
            quiet.stop()
        media = server.upload_document(copies) or None
        idle = idle_rates(server)
        before, started = server.operations_by_kind(), time.perf_counter()
        server.operation_profile(n)
        _, ids = server.send_many(n, concurrency=4, media=media)
        server.wait_delivered(ids, 300)
        time.sleep(0.5)  # the last Communication versions and audit events
        total_kinds = by_kind(before, server.operations_by_kind(), idle, time.perf_counter() - started, n)
        total_profile = server.operation_profile(n)
        delivered = server.count("fax_jobs", {"communication_id": {"$in": ids}, "status": "DELIVERED"})
        report[label] = {
            "faxes": n,
            "delivered": delivered,
            "idle_ops_per_second": round(sum(idle.values()), 1),
            "ops_per_send": round(sum(send_kinds.values()), 1),
            "ops_per_delivered_fax_including_send": round(sum(total_kinds.values()), 1),
            "per_send_by_kind": send_kinds,
            "per_delivered_fax_by_kind": total_kinds,
            "per_send_by_command": send_profile,  # the server's side, idle work included: where they go
            "per_delivered_fax_by_command": total_profile,
        }
    return report


def section_drain(server: Server, n: int) -> dict[str, Any]:
    """Also the CPU the database and the server used meantime: which of them the drain waited for."""
    database_cpu, server_cpu = server.database_process.cpu_seconds(), server.process.cpu_seconds()
    accept, ids = server.send_many(n)
    started_after_accept = server.wait_delivered(ids, 600)
    drain = accept + started_after_accept
    return {
        "faxes": n,
        "accept_seconds": round(accept, 2),
        "all_finished_seconds": round(drain, 2),
        "drain_ratio": round(drain / accept, 2),
        "database_cpu_seconds": round(server.database_process.cpu_seconds() - database_cpu, 1),
        "server_cpu_seconds": round(server.process.cpu_seconds() - server_cpu, 1),
        "delivered": server.count("fax_jobs", {"communication_id": {"$in": ids}, "status": "DELIVERED"}),
    }


def run_loadgen(server: Server, scenario: str, requests: int, seconds: float) -> dict[str, Any]:
    spec = {
        "scenario": scenario, "concurrency": 32, "requests": requests, "seconds": seconds,
        "url": server.url, "token": server.token, "mongodb_uri": server.uri, "database": DATABASE,
    }  # fmt: skip
    run = subprocess.run(
        [sys.executable, str(HERE / "loadgen.py")], input=json.dumps(spec), capture_output=True, text=True
    )
    if run.returncode != 0:
        raise SystemExit(f"{scenario} failed:\n{run.stderr[-3000:]}")
    measured = json.loads(run.stdout)
    latencies = measured["latencies_ms"]
    return {
        "requests": measured["requests"],
        "requests_per_s": round(measured["requests"] / measured["seconds"], 1),
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
    }


def section_throughput(server: Server, requests: int, seconds: float) -> dict[str, Any]:
    """Also the CPU each cell cost the server and the database, per request: which of them bounds it."""
    run_loadgen(server, "baseline_insert", 200, 5)  # warm-up
    run_loadgen(server, "sdk_send", 100, 5)

    def cell(scenario: str) -> dict[str, Any]:
        database_cpu, server_cpu = server.database_process.cpu_seconds(), server.process.cpu_seconds()
        result = run_loadgen(server, scenario, requests, seconds)
        done = max(1, int(result["requests"]))
        result["database_cpu_ms_per_request"] = round(
            (server.database_process.cpu_seconds() - database_cpu) * 1000 / done, 2
        )
        result["server_cpu_ms_per_request"] = round((server.process.cpu_seconds() - server_cpu) * 1000 / done, 2)
        return result

    baseline = cell("baseline_insert")
    send = cell("sdk_send")
    return {
        "baseline_insert": baseline,
        "sdk_send": send,
        "ratio": round(send["requests_per_s"] / baseline["requests_per_s"], 3),
        "p99_over_p50": round(send["p99_ms"] / send["p50_ms"], 2),
    }


def seed_history(server: Server, total: int) -> None:
    """Bring the finished faxes in the database up to ``total``: jobs, their Communications and the simulator's
    records as the product leaves them once a fax is DELIVERED (a delivered fax is read back and copied)."""

    async def seed() -> None:
        client = AsyncMongoClient(server.uri, tz_aware=True)
        database = client[DATABASE]
        have = await database.fax_jobs.count_documents({"_id": {"$regex": "^history-"}})
        job = await database.fax_jobs.find_one({"state": "done", "status": "DELIVERED"})
        record = await database.simulator_faxes.find_one({"done": True})
        assert job is not None and record is not None, "deliver one fax first"
        communication = await database.Communication.find_one({"_id": job["communication_id"]})
        assert communication is not None
        communication["_fhirfax"].pop("pending", None)
        batch = 2000
        for start in range(have, total, batch):
            jobs, records, communications = [], [], []
            for n in range(start, min(total, start + batch)):
                fax_id, carrier_id, communication_id = f"history-{n}", f"sim-history-{n}", str(uuid.uuid4())
                jobs.append({**job, "_id": fax_id, "communication_id": communication_id,
                             "carrier_ids": {"1": carrier_id}})  # fmt: skip
                records.append({**record, "_id": carrier_id, "reference": f"{fax_id}:1"})
                identifier = [{**i, "value": fax_id} for i in communication.get("identifier", [])[:1]]
                communications.append({**communication, "_id": communication_id, "id": communication_id,
                                       "identifier": identifier})  # fmt: skip
            await database.fax_jobs.insert_many(jobs, ordered=False)
            await database.simulator_faxes.insert_many(records, ordered=False)
            await database.Communication.insert_many(communications, ordered=False)
            if start % 100_000 == 0:
                print(f"  seeding: {start}", flush=True)
        await client.close()

    asyncio.run(seed())


def section_history(server: Server, sizes: list[int], seconds: float) -> list[dict[str, Any]]:
    results = []
    _warm, ids = server.send_many(1, 1)
    server.wait_delivered(ids, 120)
    for size in sizes:
        seeding = time.perf_counter()
        seed_history(server, size)
        print(f"  seeded {size} finished faxes in {time.perf_counter() - seeding:.0f} s", flush=True)
        time.sleep(3)
        cpu = server.idle_database_cpu(seconds)
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            _, ids = server.send_many(1, 1)
            server.wait_delivered(ids, 120)
            latencies.append(time.perf_counter() - started)
        results.append({
            "finished_faxes": size,
            "app_start_seconds": round(server.started_in, 1),
            "idle_database_cpu_percent": round(cpu, 1),
            "send_to_delivered_median_s": round(statistics.median(latencies), 3),
        })  # fmt: skip
        print(f"  history {size:>8}: idle DB CPU {cpu:5.1f}%  send->DELIVERED {statistics.median(latencies):.3f}s",
              flush=True)  # fmt: skip
    return results


def open_fds(pid: int) -> int:
    """File descriptors the process has open (sockets, files)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def section_soak(server: Server, seconds: float) -> dict[str, Any]:
    """Mixed sends with deliveries running throughout; the server's RSS and open descriptors (and the
    database's) sampled every 2 s."""
    samples: list[tuple[float, float, int, float, int]] = []
    stop = threading.Event()
    started = time.monotonic()
    database_pid = server.database_process.pid

    def sample() -> None:
        while not stop.is_set():
            samples.append((
                time.monotonic() - started, server.process.memory_mb(), open_fds(server.process.pid),
                server.database_process.memory_mb(), open_fds(database_pid),
            ))  # fmt: skip
            stop.wait(2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sent = 0
    while time.monotonic() - started < seconds:
        _, ids = server.send_many(100, 8)
        sent += len(ids)
    stop.set()
    sampler.join()
    delivered = server.count("fax_jobs", {"status": "DELIVERED"})
    half = [s for s in samples if s[0] >= seconds / 2]
    tenth = [s for s in samples if s[0] >= seconds / 10]

    def at(sample: tuple[float, float, int, float, int] | None) -> dict[str, Any] | None:
        if sample is None:
            return None
        return {"t": round(sample[0]), "rss_mb": round(sample[1], 1), "fds": sample[2],
                "database_rss_mb": round(sample[3], 1), "database_fds": sample[4]}  # fmt: skip

    return {
        "seconds": round(time.monotonic() - started, 1),
        "faxes": sent,
        "delivered_by_the_end": delivered,
        "start": at(samples[0]),
        "after_a_tenth": at(tenth[0] if tenth else None),
        "middle": at(half[0] if half else None),
        "end": at(samples[-1]),
        "rss_mb_max": round(max(s[1] for s in samples), 1),
        "fds_max": max(s[2] for s in samples),
        "series": [at(s) for s in samples[:: max(1, len(samples) // 30)]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="which sections, comma-separated")
    parser.add_argument("--faxes", type=int, default=300, help="faxes in the drain")
    parser.add_argument("--ops-faxes", type=int, default=100, help="faxes whose operations are counted")
    parser.add_argument("--history", default="0,20000,100000", help="finished faxes for the idle measurements")
    parser.add_argument(
        "--data", type=Path, help="keep the history section's database here (seeded once, reused by later runs)"
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--speed", type=float, default=1.0, help="simulator speed during the throughput section")
    parser.add_argument("--requests", type=int, default=1500, help="requests per throughput cell")
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit per throughput cell")
    parser.add_argument("--soak", type=float, default=60.0, help="soak length in seconds")
    parser.add_argument("--output", type=Path, default=RESULTS / "delivery.json")
    args = parser.parse_args()
    chosen = [s for s in SECTIONS if s in args.sections.split(",")]
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine()}
    for section in chosen:
        work = Path(tempfile.mkdtemp(prefix=f"fhir-fax-delivery-{section}-"))
        speed = args.speed if section in ("throughput", "soak") else 1000.0
        server = Server(work, speed, data=args.data if section == "history" else None)
        try:
            server.start_database()
            server.start_app()
            server.upload_document()
            print(f"{section} ...", flush=True)
            if section == "ops":
                report[section] = section_ops(server, args.ops_faxes, work)
            elif section == "drain":
                report[section] = section_drain(server, args.faxes)
            elif section == "throughput":
                report[section] = section_throughput(server, args.requests, args.seconds)
            elif section == "history":
                sizes = [int(s) for s in args.history.split(",") if s]
                report[section] = section_history(server, sizes, args.idle_seconds)
            elif section == "soak":
                report[section] = section_soak(server, args.soak)
            print(f"  {json.dumps(report[section])}", flush=True)
        finally:
            server.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
