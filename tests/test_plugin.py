"""FaxModule mounted on someone else's FastAPI app: both keep working, neither disturbs the other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from fhir_fax import FaxModule, Settings
from fhir_fax.fhir.http import FHIRRoute

from helpers import login


class Greeting(BaseModel):
    name: str


def host_app(events: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("host started")
        yield {"greeting": "hello"}
        events.append("host stopped")

    app = FastAPI(lifespan=lifespan)

    @app.get("/api/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    @app.post("/api/greet")
    async def greet(greeting: Greeting) -> dict[str, str]:
        return {"message": f"hello {greeting.name}"}

    return app


async def test_module_and_host_routes_work_side_by_side(settings: Settings, database: Any) -> None:
    events: list[str] = []
    app = host_app(events)
    module = FaxModule(settings, database=database)
    module.install(app)
    async with (
        app.router.lifespan_context(app) as state,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host") as http,
    ):
        assert events == ["host started"] and state == {"greeting": "hello"}
        assert (await http.get("/api/ping")).json() == {"pong": "yes"}
        assert (await http.post("/fhir/Patient", json={"resourceType": "Patient"})).status_code == 401
        await login(http)
        created = await http.post(
            "/fhir/Patient", json={"resourceType": "Patient", "active": True},
            headers={"content-type": "application/fhir+json"},
        )  # fmt: skip
        assert created.status_code == 201
        assert (await http.get(f"/fhir/Patient/{created.json()['id']}")).json()["active"] is True
        # The host's own error handling is untouched by the module.
        host_invalid = await http.post("/api/greet", json={})
        assert host_invalid.status_code == 422 and "detail" in host_invalid.json()
        assert (await http.get("/api/nowhere")).json() == {"detail": "Not Found"}
    assert events == ["host started", "host stopped"]
    assert module.fhir.database is None  # the module stopped with the host


async def test_unexpected_errors_become_an_outcome_without_a_stack_trace(settings: Settings) -> None:
    app = FastAPI()
    router = APIRouter(route_class=FHIRRoute)

    @router.get("/fhir/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host") as http:
        response = await http.get("/fhir/boom")
    assert response.status_code == 500
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "incident" in outcome["issue"][0]["diagnostics"]
    assert "secret internals" not in response.text and "Traceback" not in response.text


async def test_requests_before_start_get_503(settings: Settings) -> None:
    app = FastAPI()
    FaxModule(settings).install(app)  # not started: no lifespan run
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host") as http:
        response = await http.get("/fhir/Patient/x")
    assert response.status_code == 503
    assert "retry in a moment" in response.json()["issue"][0]["diagnostics"]


async def test_unexpected_errors_on_sdk_routes_are_message_and_code(settings: Settings) -> None:
    from fhir_fax.sdk_http import SDKRoute

    app = FastAPI()
    router = APIRouter(route_class=SDKRoute)

    @router.get("/fax/v1/boom")
    async def boom() -> None:
        raise KeyError("secret internals")

    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host") as http:
        response = await http.get("/fax/v1/boom")
    assert response.status_code == 500
    assert set(response.json()) == {"message", "code"} and response.json()["code"] == 500
    assert "incident" in response.json()["message"] and "secret internals" not in response.text


async def test_a_start_that_fails_part_way_leaves_no_database_behind(settings: Settings) -> None:
    """The carrier cannot be made (no Telnyx credentials) after the embedded database was started: start-up
    fails with the reason, and the database process it started is stopped again."""
    broken = settings.model_copy(update={"carrier": "telnyx", "worker_enabled": True})
    module = FaxModule(broken)
    with pytest.raises(Exception, match="FHIR_FAX_TELNYX_API_KEY"):
        await module.start()
    assert not (broken.data_dir / "db.json").exists(), "the database was stopped cleanly"
    assert processes_using(broken.data_dir) == [], "no database process is left running on the data folder"


def processes_using(folder: Path) -> list[int]:
    """Live processes whose command line names ``folder`` (the embedded database is started with it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(folder) in command and "secantusd" in command:
                found.append(int(entry.name))
    return found
