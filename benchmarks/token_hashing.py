"""Does the server stay responsive while token requests hash secrets? ``/healthz`` latency, idle and under load.

Starts a real ``fhir-fax serve`` (embedded database in a temporary folder), times ``GET /healthz`` alone,
then again while ``--concurrency`` clients (in a second process) request tokens with the right secret in
a loop (each one an scrypt hash of about 50 ms). With hashing on the event loop every health check waits
behind the hashes in progress; in the hashing pool it does not.

    python benchmarks/token_hashing.py [--concurrency 16] [--requests 200] [--label after]

Writes ``benchmarks/results/token_hashing-<label>.json`` and prints the figures. Not a test (timings
depend on the machine); the tests check the structure instead (the hash runs in a pool thread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from fhir_fax.embedded import free_port

from serving import wait_until_serving

RESULTS = Path(__file__).resolve().parent / "results"
ADMIN = ("bench-admin", "bench-admin-secret")


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_FAX_")},
        "FHIR_FAX_BOOTSTRAP_CLIENT_ID": ADMIN[0],
        "FHIR_FAX_BOOTSTRAP_CLIENT_SECRET": ADMIN[1],
        "FHIR_FAX_WORKER_ENABLED": "false",
    }
    command = [sys.executable, "-m", "fhir_fax.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    log = open(data_dir.parent / "server.log", "wb")  # noqa: SIM115 - kept open for the child's lifetime
    process = subprocess.Popen([*command, "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, url, data_dir.parent / "server.log")
    return process, url


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "max_ms": round(ordered[-1], 1),
    }


async def health_latencies(http: httpx.AsyncClient, requests: int) -> list[float]:
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        assert (await http.get("/healthz")).status_code == 200
        samples.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.01)
    return samples


async def keep_asking(url: str, concurrency: int) -> dict[str, int]:
    """The load: ``concurrency`` clients asking for tokens until SIGTERM; how each request was answered."""
    grant = {"grant_type": "client_credentials", "client_id": ADMIN[0], "client_secret": ADMIN[1]}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def client() -> None:
            while not stop.is_set():
                status = (await http.post("/oauth/token", data=grant)).status_code
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return {str(k): v for k, v in sorted(statuses.items())}


async def measure(url: str, concurrency: int, requests: int) -> dict[str, object]:
    """Health checks from this process; the token load from another, so the two do not share a client loop."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for _ in range(20):  # warm-up
            await http.get("/healthz")
        idle = await health_latencies(http, requests)
        load = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--load", url, "--concurrency", str(concurrency), stdout=subprocess.PIPE
        )
        await asyncio.sleep(1.5)  # let the token requests pile up
        started = time.perf_counter()
        loaded = await health_latencies(http, requests)
        elapsed = time.perf_counter() - started
        load.terminate()
        statuses = json.loads((await asyncio.wait_for(load.communicate(), 60))[0])
    return {
        "healthz_idle": summary(idle),
        "healthz_during_token_load": summary(loaded),
        "tokens_per_second": round(statuses.get("200", 0) / (elapsed + 1.5), 1),
        "token_statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--label", default="latest")
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)  # the load-generating child
    args = parser.parse_args()
    if args.load:
        print(json.dumps(asyncio.run(keep_asking(args.load, args.concurrency))))
        return
    with tempfile.TemporaryDirectory() as folder:
        process, url = start_server(Path(folder) / "data")
        try:
            figures = asyncio.run(measure(url, args.concurrency, args.requests))
        except Exception:
            print((Path(folder) / "server.log").read_text()[-6000:], file=sys.stderr)
            raise
        finally:
            process.terminate()
            process.wait(timeout=30)
    result = {
        "label": args.label,
        "concurrency": args.concurrency,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        **figures,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"token_hashing-{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
