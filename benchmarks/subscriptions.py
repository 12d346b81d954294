"""Subscription notifications: throughput to a local listener, and the cost of Subscriptions that do not match.

Runs the embedded database and a real runtime in this process, with the rest-hook listener the tests use
(``tests/servers/hook_listener.py``, a stdlib HTTP server in its own process) as the endpoint.

1. Throughput: ``--notifications`` Communications are written (each marked pending in its write), then the
   dispatcher and sender run until every notification was taken by the listener: notifications per second,
   end to end (match, queue, claim, access check, POST, record).
2. Cost per status step: one Communication version (``store.modify``, as the tracker writes a fax status
   step) and its dispatch, timed and its database commands counted, with no Subscription, with 1,000 active
   Subscriptions pinned to other patients (``Communication?patient=Patient/other-N``), and with 1,000 that pin
   nothing the index can use (``Communication?sent=lt2000-01-01``: each must run its filter).

    python benchmarks/subscriptions.py --notifications 1000 --steps 200

Writes ``benchmarks/results/subscriptions.json`` and prints a markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from fhir_fax.embedded import EmbeddedDatabase, free_port
from fhir_fax.runtime import Runtime
from fhir_fax.settings import Settings
from fhir_fax.subscriptions.queue import NOTIFICATIONS
from fhir_fax.subscriptions.resource import check_subscription

from serving import wait_until_serving

RESULTS = Path(__file__).resolve().parent / "results"
LISTENER = Path(__file__).resolve().parent.parent / "tests" / "servers" / "hook_listener.py"
ADMIN = ("bench-admin", "bench-admin-secret")
SUBSCRIBER = {"client": ADMIN[0], "scopes": "", "patient": None}  # whose rights each notification is checked by


class Counter(monitoring.CommandListener):
    """Database commands sent (what a step costs in round trips)."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def subscription(criteria: str, endpoint: str) -> dict[str, Any]:
    return {"resourceType": "Subscription", "status": "requested", "criteria": criteria,
            "channel": {"type": "rest-hook", "endpoint": endpoint}}  # fmt: skip


async def add_subscriptions(runtime: Runtime, criteria: list[str], endpoint: str) -> None:
    resources = [check_subscription(subscription(c, endpoint), runtime.registry, ["127.0.0.1"])[0] for c in criteria]
    for start in range(0, len(resources), 500):
        await runtime.store.create_many(resources[start : start + 500], validated=True)
    await runtime.store.collection("Subscription").update_many({}, {"$set": {"_fhirfax.private": SUBSCRIBER}})
    while await runtime.subscriptions.dispatcher.step():  # their own versions
        pass


async def throughput(runtime: Runtime, database: Any, endpoint: str, count: int) -> dict[str, Any]:
    await add_subscriptions(runtime, ["Communication?category=bench-throughput"], endpoint)
    body = {"resourceType": "Communication", "status": "completed",
            "category": [{"coding": [{"code": "bench-throughput"}]}]}  # fmt: skip
    for start in range(0, count, 500):
        await runtime.store.create_many([dict(body) for _ in range(min(500, count - start))], validated=True)
    began = time.perf_counter()
    while await database[NOTIFICATIONS].count_documents({"state": {"$ne": "due"}}) < count:
        await runtime.subscriptions.step()
    sent = await database[NOTIFICATIONS].count_documents({"state": "sent"})
    assert sent == count, f"only {sent} of {count} were sent"
    seconds = time.perf_counter() - began
    return {"notifications": count, "seconds": round(seconds, 2), "per_second": round(count / seconds, 1)}


async def step_cost(runtime: Runtime, counter: Counter, steps: int) -> dict[str, float]:
    """Write ``steps`` versions of one Communication about Patient/bench-x and dispatch each: time and commands."""
    body = {"resourceType": "Communication", "status": "in-progress", "subject": {"reference": "Patient/bench-x"}}
    created = await runtime.store.create(body, validated=True)
    await runtime.subscriptions.dispatcher.step()
    write_times, dispatch_times, commands = [], [], []
    for number in range(steps):
        began = time.perf_counter()
        await runtime.store.modify(
            "Communication", created["id"], lambda c, n=number: {**c, "note": [{"text": str(n)}]}
        )
        written = time.perf_counter()
        before = counter.count
        await runtime.subscriptions.dispatcher.step()
        dispatch_times.append(time.perf_counter() - written)
        write_times.append(written - began)
        commands.append(counter.count - before)
    return {
        "write_ms": round(statistics.median(write_times) * 1000, 2),
        "dispatch_ms": round(statistics.median(dispatch_times) * 1000, 2),
        "dispatch_commands": statistics.median(commands),
    }


async def run(args: argparse.Namespace, folder: Path, uri: str, endpoint: str) -> dict[str, Any]:
    counter = Counter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, event_listeners=[counter])
    try:
        settings = Settings(
            data_dir=folder,
            _env_file=None,
            subscription_allowed_hosts=["127.0.0.1"],
            bootstrap_client_id=ADMIN[0],
            bootstrap_client_secret=ADMIN[1],
        )
        results: dict[str, Any] = {}
        runtime = Runtime.build(settings, client["bench_throughput"])
        await runtime.prepare()
        await runtime.store.create({"resourceType": "Patient"}, validated=True)  # warm up
        results["throughput"] = await throughput(runtime, client["bench_throughput"], endpoint, args.notifications)
        print("throughput", results["throughput"], file=sys.stderr)
        await runtime.close()
        costs = {}
        for case, criteria, steps in (
            ("no Subscription", [], args.steps),
            ("1,000 pinned to other patients", [f"Communication?patient=Patient/other-{n}" for n in range(1000)],
             args.steps),
            ("1,000 pinning nothing (filter run each)", ["Communication?sent=lt2000-01-01"] * 1000,
             max(args.steps // 10, 5)),
        ):  # fmt: skip
            runtime = Runtime.build(settings, client[f"bench_cost_{len(costs)}"])
            await runtime.prepare()
            await add_subscriptions(runtime, criteria, endpoint)
            costs[case] = await step_cost(runtime, counter, steps)
            print(case, costs[case], file=sys.stderr)
            await runtime.close()
        results["per_status_step"] = costs
        return results
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-subs-"))
    database_server = EmbeddedDatabase(folder / "db")
    uri = database_server.start()
    port = free_port()
    log = folder / "hooks.jsonl"
    listener = subprocess.Popen([sys.executable, str(LISTENER), str(port), str(log)])
    try:
        wait_until_serving(listener, f"http://127.0.0.1:{port}", log)
        results = asyncio.run(run(args, folder, uri, f"http://127.0.0.1:{port}/hook"))
    finally:
        listener.kill()
        database_server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    results["machine"] = {"python": platform.python_version(), "cpus": len(__import__("os").sched_getaffinity(0))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "subscriptions.json").write_text(json.dumps(results, indent=2) + "\n")
    t = results["throughput"]
    print(f"Throughput: {t['notifications']} notifications in {t['seconds']} s = {t['per_second']}/s\n")
    print("| Active Subscriptions | write (ms) | dispatch (ms) | dispatch DB commands |")
    print("|---|---|---|---|")
    for case, cost in results["per_status_step"].items():
        print(f"| {case} | {cost['write_ms']} | {cost['dispatch_ms']} | {cost['dispatch_commands']} |")


if __name__ == "__main__":
    main()
