"""The benchmark's server: the production app exactly as ``fhir-fax serve`` runs it, plus two bare endpoints.

The bare endpoints are the baselines every result is compared with, on the same process, framework,
client and database: (a) ``POST /bench/insert`` authenticates the bearer token like every real route
and inserts one small document; (b) ``GET /bench/read/{id}`` authenticates and reads one small document
by id. They exist only in this file, never in the product.

    FHIR_FAX_... python benchmarks/bench_server.py
"""

from __future__ import annotations

import os
import uuid
from collections import Counter

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pymongo import monitoring

from fhir_fax.app import create_app
from fhir_fax.settings import Settings


class OperationProfile(monitoring.CommandListener):
    """Every command the server's clients send, by (command, collection): where a fax's operations go."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        where = target if isinstance(target, str) else ""
        name = f"{event.command_name} {where}".strip()
        if event.command_name == "update" and where == "fax_jobs":  # which step of a fax: the fields it sets
            changes = (event.command.get("updates") or [{}])[0].get("u") or {}
            name += " [" + ",".join(sorted(changes.get("$set") or {})[:3]) + "]"
        self.counts[name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def bench_app(settings: Settings) -> FastAPI:
    profile = OperationProfile()
    if os.environ.get("BENCH_OPERATION_PROFILE"):
        monitoring.register(profile)  # before create_app makes its clients
    app = create_app(settings)
    module = app.state.fax_module

    @app.post("/bench/insert", include_in_schema=False)
    async def insert(request: Request) -> JSONResponse:
        runtime = module.runtime
        assert runtime is not None
        await runtime.guard.principal(request)
        document = {"_id": str(uuid.uuid4()), **(await request.json())}
        await runtime.database["bench_baseline"].insert_one(document)
        return JSONResponse({"id": document["_id"]})

    @app.get("/bench/read/{document_id}", include_in_schema=False)
    async def read(request: Request, document_id: str) -> JSONResponse:
        runtime = module.runtime
        assert runtime is not None
        await runtime.guard.principal(request)
        document = await runtime.database["bench_baseline"].find_one({"_id": document_id})
        if document is None:
            return JSONResponse({"message": "not found"}, status_code=404)
        return JSONResponse(document)

    @app.post("/bench/operations", include_in_schema=False)
    async def operations() -> JSONResponse:
        """The commands counted since the last call (``BENCH_OPERATION_PROFILE=1``), and a fresh count."""
        counted = dict(profile.counts.most_common())
        profile.counts.clear()
        return JSONResponse(counted)

    return app


if __name__ == "__main__":
    settings = Settings()
    uvicorn.run(bench_app(settings), host=settings.host, port=settings.port, log_level="info")
