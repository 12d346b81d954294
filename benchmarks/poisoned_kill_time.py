"""Kill time while one poisoned record is present: when is a fax with a 20 s kill time stopped?

The poisoned record is what a fax sent before numbers were matched whole looks like: its
Communication's contained recipient id ends in a newline (from ``"+16175550143\\n"``), so no new
version of it validates, and its job is waiting for its Communication to be repaired. A second fax,
which the simulator (real speed) would deliver after 34 s, has a 20 s kill time. Before each job was
handled on its own, the repair of the first aborted every reconciliation pass and the second was
delivered at 34 s; now it is stopped at its kill time.

    python benchmarks/poisoned_kill_time.py

Prints one line. Not a test (it measures time).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from pymongo import AsyncMongoClient

from fhir_fax.app import create_app
from fhir_fax.embedded import EmbeddedDatabase
from fhir_fax.fhir.models import now
from fhir_fax.settings import Settings
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

ROOT = Path(__file__).resolve().parent.parent
SENDER = "HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964"
CLIENT = {"bootstrap_client_id": "bench", "bootstrap_client_secret": "bench-secret"}


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="fhir-fax-poison-"))
    server = EmbeddedDatabase(work / "mongo")
    mongo = AsyncMongoClient(server.start(), tz_aware=True)
    database = mongo["poisoned_kill_time"]
    settings = Settings(
        data_dir=work / "data", base_url="http://fhir.test", load_fixtures=True, _env_file=None,
        kill_time_seconds=20.0, worker_poll_seconds=0.05, **CLIENT,
    )  # fmt: skip
    app = create_app(settings, database=database)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fhir.test") as http,
        ):
            form = {"grant_type": "client_credentials", "client_id": "bench", "client_secret": "bench-secret"}
            http.headers["authorization"] = (
                "Bearer " + (await http.post("/oauth/token", data=form)).json()["access_token"]
            )
            pdf = (ROOT / "fhir_fax" / "data" / "fixtures" / "referral-letter.pdf").read_bytes()
            await Z3Store(database).put(Z3Location("letters", "referral.pdf"), pdf, "application/pdf")
            await http.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
            body = {"media": "z3://letters/referral.pdf", "quality": "standard", "recipientNumber": "+16175550143"}
            body["sender"] = SENDER
            poisoned = (await http.post("/fax/v1/send", json=body)).json()["communicationResource"]["id"]
            await database.Communication.update_one({"_id": poisoned}, {"$set": {"contained.0.id": "16175550143\n"}})
            await database.fax_jobs.update_one(
                {"communication_id": poisoned},
                {"$set": {"state": "done", "synced": False, "last_news_at": now() - timedelta(minutes=1)}},
            )
            started = time.monotonic()
            other = (await http.post("/fax/v1/send", json=body)).json()["communicationResource"]["id"]
            while True:
                communication = (await http.get(f"/fhir/Communication/{other}")).json()
                if communication["status"] in ("completed", "stopped"):
                    elapsed = time.monotonic() - started
                    print(f"fax with a 20 s kill time: {communication['status']} after {elapsed:.1f} s")
                    return
                await asyncio.sleep(0.2)
    finally:
        await mongo.close()
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
