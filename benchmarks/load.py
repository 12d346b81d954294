"""The benchmark harness (``make bench``): each operation beside baselines measured in the same run.

Starts the embedded database in its own process and the production app (``bench_server.py``: what
``fhir-fax serve`` runs, plus two bare baseline endpoints) in another, then drives it from a separate
load-generator process (``loadgen.py``) over loopback at concurrency 1, 8 and 32:

- baselines: (a) ``POST /bench/insert`` authenticates and inserts one small document, (b) ``GET
  /bench/read/{id}`` authenticates and reads one, (c) the driver alone inserting and reading the same
  documents with no HTTP;
- operations: ``POST /fax/v1/send``, ``POST /fhir/Communication/$send-fax``, ``GET Communication/{id}``,
  ``Communication?patient=X&_count=20`` and status events (signed Telnyx webhooks, each applied through
  the real code path: verify, de-duplicate, move the job forward, new Communication version, audit).

Each result is printed with its ratio to the matching baseline at the same concurrency, so a busy machine
slows both sides. Server CPU seconds per request come from ``/proc``, as does the server's RSS. The worker
is off (deliveries are not part of these figures) and the carrier is Telnyx so its webhooks can be signed.
``--soak 300`` adds a five-minute mixed load that samples the server's RSS.

Writes ``benchmarks/results/latest.json`` and prints a markdown table. Not a test; bounded in requests
and in time, and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo import AsyncMongoClient

from fhir_fax.embedded import EmbeddedDatabase, free_port
from fhir_fax.fax.jobs import OutboundStatus, Position
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from loadgen import SEARCHED, sdk_body, telnyx_fax_id

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PDF = HERE.parent / "fhir_fax" / "data" / "fixtures" / "referral-letter.pdf"
ADMIN = ("bench-admin", "bench-admin-secret")
SENDER_NUMBER = "+12223334444"
DATABASE = "bench"
QUEUED_FIRST_ATTEMPT = Position.of(1, OutboundStatus.QUEUED).key  # jobs whose carrier events have not come yet

# name, what it measures, the baseline it is compared with
SCENARIOS: list[tuple[str, str, str | None]] = [
    ("baseline_insert", "(a) bare endpoint: authenticate + insert one document", None),
    ("baseline_read", "(b) bare endpoint: authenticate + read one document by id", None),
    ("driver_insert", "(c) driver alone: insert one document", None),
    ("driver_read", "(c) driver alone: read one document by id", None),
    ("sdk_send", "POST /fax/v1/send", "baseline_insert"),
    ("fhir_send", "POST /fhir/Communication/$send-fax", "baseline_insert"),
    ("read", "GET /fhir/Communication/{id}", "baseline_read"),
    ("search", "GET /fhir/Communication?patient=X&_count=20", "baseline_read"),
    ("status_events", "status event (signed Telnyx webhook)", "baseline_insert"),
]
CONCURRENCY = (1, 8, 32)


class Process:
    """CPU and memory of a running process, read from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.ticks  # utime + stime

    def memory_mb(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return 0.0


def machine() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Harness:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.database_server = EmbeddedDatabase(work / "data")
        self.telnyx_key = Ed25519PrivateKey.generate()
        self.server: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""
        self.communications: list[str] = []
        self.baseline_ids: list[str] = []
        self.used_faxes: set[str] = set()
        self.measuring = False

    # -- processes ------------------------------------------------------------------------------------

    def start(self) -> None:
        uri = self.database_server.start()
        port = free_port()
        public = self.telnyx_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_FAX_")},
            "FHIR_FAX_MONGODB_URI": uri,
            "FHIR_FAX_DATABASE_NAME": DATABASE,
            "FHIR_FAX_PORT": str(port),
            "FHIR_FAX_LOAD_FIXTURES": "true",
            "FHIR_FAX_WORKER_ENABLED": "false",
            "FHIR_FAX_CARRIER": "telnyx",
            "FHIR_FAX_CARRIER_FAX_NUMBER": SENDER_NUMBER,
            "FHIR_FAX_TELNYX_API_KEY": "bench",
            "FHIR_FAX_TELNYX_CONNECTION_ID": "bench",
            "FHIR_FAX_TELNYX_API_BASE": "http://127.0.0.1:9",
            "FHIR_FAX_TELNYX_PUBLIC_KEY": base64.b64encode(public).decode(),
            "FHIR_FAX_BOOTSTRAP_CLIENT_ID": ADMIN[0],
            "FHIR_FAX_BOOTSTRAP_CLIENT_SECRET": ADMIN[1],
            "FHIR_FAX_TOKEN_LIFETIME_SECONDS": "86400",
        }
        with open(self.work / "server.log", "wb") as log:
            self.server = subprocess.Popen(
                [sys.executable, str(HERE / "bench_server.py")], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise SystemExit(f"the server exited:\n{(self.work / 'server.log').read_text()}")
            try:
                if httpx.get(f"{self.url}/fhir/metadata", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("the server did not start")
        self.process = Process(self.server.pid)
        assert self.database_server.process is not None
        self.database_process = Process(self.database_server.process.pid)

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
        self.database_server.stop()

    # -- data -----------------------------------------------------------------------------------------

    def prepare(self) -> None:
        answer = httpx.post(
            f"{self.url}/oauth/token",
            data={"grant_type": "client_credentials", "client_id": ADMIN[0], "client_secret": ADMIN[1]},
        )
        answer.raise_for_status()
        self.token = answer.json()["access_token"]
        headers = {"authorization": f"Bearer {self.token}"}
        httpx.post(f"{self.url}/fax/v1/onboard", json={"faxNumber": SENDER_NUMBER}, headers=headers).raise_for_status()
        self._upload_document()
        # The searched patient has 60 faxes: a patient's own count, not the collection's size, is what the
        # embedded database's per-patient search scales with (see the README).
        for _ in range(60):
            body = sdk_body(SEARCHED)
            httpx.post(f"{self.url}/fax/v1/send", json=body, headers=headers, timeout=30).raise_for_status()

        async def seed() -> list[str]:
            client = AsyncMongoClient(self.database_server.uri, tz_aware=True)
            database = client[DATABASE]
            ids = [f"baseline-{n}" for n in range(1000)]
            await database["bench_baseline"].insert_many(
                [{"_id": i, "n": n, "note": "baseline"} for n, i in enumerate(ids)]
            )
            await client.close()
            return ids

        self.baseline_ids = asyncio.run(seed())

    def _upload_document(self) -> None:
        async def upload() -> None:
            client = AsyncMongoClient(self.database_server.uri, tz_aware=True)
            location = Z3Location("bench", "referral-letter.pdf")
            await Z3Store(client[DATABASE]).put(location, PDF.read_bytes(), "application/pdf")
            await client.close()

        asyncio.run(upload())

    def hand_over(self, fax_ids: list[str]) -> None:
        """Record attempt 1 of each fax as handed to Telnyx (``telnyx_fax_id``), as the worker does: the server
        applies a carrier's event only to an attempt handed to that carrier under the id the event names."""

        async def record() -> None:
            client = AsyncMongoClient(self.database_server.uri, tz_aware=True)
            jobs = client[DATABASE].fax_jobs
            for fax_id in fax_ids:
                changes = {"state": "submitted", "carrier": "telnyx", "carrier_ids.1": telnyx_fax_id(fax_id)}
                await jobs.update_one({"_id": fax_id}, {"$set": changes, "$unset": {"due_at": ""}})
            await client.close()

        asyncio.run(record())

    def database_ids(self, collection: str, query: dict[str, Any], limit: int) -> list[str]:
        async def find() -> list[str]:
            client = AsyncMongoClient(self.database_server.uri, tz_aware=True)
            found = await client[DATABASE][collection].find(query, {"_id": 1}).limit(limit).to_list()
            await client.close()
            return [d["_id"] for d in found]

        return asyncio.run(find())

    # -- cells ----------------------------------------------------------------------------------------

    def cell(self, scenario: str, concurrency: int, requests: int, seconds: float) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "scenario": scenario,
            "concurrency": concurrency,
            "requests": requests,
            "seconds": seconds,
            "url": self.url,
            "token": self.token,
            "mongodb_uri": self.database_server.uri,
            "database": DATABASE,
        }
        if scenario in ("baseline_read", "driver_read"):
            spec["ids"] = self.baseline_ids
        elif scenario == "read":
            spec["ids"] = self.communications
        elif scenario == "status_events":
            queued = self.database_ids("fax_jobs", {"position": QUEUED_FIRST_ATTEMPT}, requests + len(self.used_faxes))
            fresh = [i for i in queued if i not in self.used_faxes][:requests]
            self.used_faxes.update(fresh)
            self.hand_over(fresh)
            spec["ids"] = fresh
            secret = self.telnyx_key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            spec["telnyx_private_key"] = secret.hex()
        cpu_before, db_before = self.process.cpu_seconds(), self.database_process.cpu_seconds()
        profiler = self._profiler(scenario, concurrency)
        run = subprocess.run(
            [sys.executable, str(HERE / "loadgen.py")], input=json.dumps(spec), capture_output=True, text=True
        )
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(timeout=60)
        if run.returncode != 0:
            raise SystemExit(f"{scenario} at {concurrency} failed:\n{run.stderr[-3000:]}")
        measured = json.loads(run.stdout)
        if not measured["requests"]:
            raise SystemExit(f"{scenario} at {concurrency} made no requests (nothing to work on?)")
        cpu = self.process.cpu_seconds() - cpu_before
        db_cpu = self.database_process.cpu_seconds() - db_before
        if scenario in ("sdk_send", "fhir_send") and len(self.communications) < 2000:
            self.communications = self.database_ids("Communication", {}, 2000)
        latencies = measured["latencies_ms"]
        count = measured["requests"]
        on_server = not scenario.startswith("driver_")
        return {
            "scenario": scenario,
            "concurrency": concurrency,
            "requests": count,
            "requests_per_s": round(count / measured["seconds"], 1),
            "p50_ms": round(percentile(latencies, 0.50), 2),
            "p95_ms": round(percentile(latencies, 0.95), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "mean_ms": round(statistics.fmean(latencies), 2),
            "server_cpu_ms_per_request": round(cpu / count * 1000, 3) if on_server else None,
            "database_cpu_ms_per_request": round(db_cpu / count * 1000, 3),
            "loadgen_cpu_ms_per_request": round(measured["loadgen_cpu_s"] / count * 1000, 3),
            "server_rss_mb": round(self.process.memory_mb(), 1),
        }

    def _profiler(self, scenario: str, concurrency: int) -> subprocess.Popen[bytes] | None:
        """``--profile SCENARIO``: py-spy samples the server (or the database) during that scenario's c=8 cell."""
        if self.args.profile != scenario or concurrency != 8 or not self.measuring:
            return None
        output = RESULTS / f"profile-{scenario}{'-database' if self.args.profile_database else ''}.txt"
        beside = Path(sys.executable).parent / "py-spy"
        pid = str((self.database_process if self.args.profile_database else self.process).pid)
        spy = str(beside) if beside.exists() else "py-spy"
        command = [spy, "record", "--pid", pid, "--format", "raw", "--rate", "250", "--output", str(output)]
        profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)  # attached before the load starts
        print(f"  profiling {scenario} into {output} (collapsed stacks)", flush=True)
        return profiler

    def matrix(self) -> list[dict[str, Any]]:
        args = self.args
        for scenario, _, _ in SCENARIOS:  # warm-up: imports, caches, connection pools, indexes
            self.cell(scenario, 8, 40, 10)
        self.measuring = True
        results = []
        chosen = set(args.only.split(",")) if args.only else {s for s, _, _ in SCENARIOS}
        chosen |= {b for s, _, b in SCENARIOS if s in chosen and b is not None}
        for concurrency in CONCURRENCY:
            budget = args.requests * (1 if concurrency == 1 else 3)
            for scenario in [s for s, _, _ in SCENARIOS if s in chosen]:
                result = self.cell(scenario, concurrency, budget, args.seconds)
                results.append(result)
                print(f"  {scenario:<16} c={concurrency:<3} {result['requests_per_s']:>8.1f}/s "
                      f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms", flush=True)  # fmt: skip
        baselines = {(r["scenario"], r["concurrency"]): r["requests_per_s"] for r in results}
        for result in results:
            baseline = dict((s, b) for s, _, b in SCENARIOS)[result["scenario"]]
            if baseline is not None:
                result["baseline"] = baseline
                result["ratio"] = round(result["requests_per_s"] / baselines[(baseline, result["concurrency"])], 3)
        return results

    def soak(self, seconds: float) -> dict[str, Any]:
        """Mixed sends and reads at concurrency 32; the server's RSS sampled every 2 s."""
        samples: list[tuple[float, float]] = []
        done = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not done.is_set():
                samples.append((time.monotonic() - started, self.process.memory_mb()))
                done.wait(2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        requests = 0
        while time.monotonic() - started < seconds:
            for scenario in ("sdk_send", "read", "search"):
                requests += self.cell(scenario, 32, 100_000, 10)["requests"]
        done.set()
        sampler.join()
        half = [(t, m) for t, m in samples if t >= seconds / 2]
        slope = _slope(half) * 60 if len(half) > 2 else 0.0
        return {
            "seconds": round(time.monotonic() - started, 1),
            "requests": requests,
            "rss_mb_start": round(samples[0][1], 1),
            "rss_mb_max": round(max(m for _, m in samples), 1),
            "rss_mb_end": round(samples[-1][1], 1),
            "rss_mb_per_minute_second_half": round(slope, 2),
            "peak_rss_mb": round(self.process.memory_mb("VmHWM"), 1),
        }


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (time, value) points, per second."""
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread if spread else 0.0


def table(results: list[dict[str, Any]]) -> str:
    described = {s: d for s, d, _ in SCENARIOS}
    lines = [
        "| operation | c | req/s | vs baseline | p50 ms | p95 ms | p99 ms | server CPU ms/req | DB CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = f"{r['ratio']:.2f} x {r['baseline'].split('_')[1]} ({'a' if 'insert' in r['baseline'] else 'b'})" \
            if "ratio" in r else "-"  # fmt: skip
        server_cpu = "-" if r["server_cpu_ms_per_request"] is None else f"{r['server_cpu_ms_per_request']:.2f}"
        lines.append(
            f"| {described[r['scenario']]} | {r['concurrency']} | {r['requests_per_s']:.0f} | {ratio} | "
            f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {server_cpu} | "
            f"{r['database_cpu_ms_per_request']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per cell at c=1 (x3 at c=8 and 32)")
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit per cell")
    parser.add_argument("--soak", type=float, default=0.0, help="also run a mixed soak of this many seconds")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--profile", metavar="SCENARIO", help="sample the server with py-spy during this scenario")
    parser.add_argument("--profile-database", action="store_true", help="profile the database process instead")
    parser.add_argument("--only", metavar="S1,S2", help="run only these scenarios (and their baselines)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fhir-fax-load-"))
    harness = Harness(work, args)
    try:
        harness.start()
        harness.prepare()
        print(f"server {harness.url}, work in {work}", flush=True)
        results = harness.matrix()
        report: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "settings": {"requests": args.requests, "seconds": args.seconds},
            "results": results,
            "peak_rss_mb": round(harness.process.memory_mb("VmHWM"), 1),
        }
        if args.soak:
            report["soak"] = harness.soak(args.soak)
    finally:
        harness.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"{report['machine']['cpu']}, {report['machine']['cores']} cores, Python {report['machine']['python']}")
    print(table(results))
    print(f"\npeak server RSS {report['peak_rss_mb']} MB")
    if "soak" in report:
        print(f"soak: {json.dumps(report['soak'])}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
