"""One error model: domain errors raised anywhere, mapped to HTTP in one table, rendered per route class."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from fhir_fax import errors
from fhir_fax.auth.oauth_http import OAuthRoute
from fhir_fax.fhir.errors import HTTP, status_of
from fhir_fax.fhir.http import FHIRRoute
from fhir_fax.module import FaxModule
from fhir_fax.sdk_http import SDKRoute
from fhir_fax.settings import Settings
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

KINDS = [
    kind
    for _, kind in inspect.getmembers(errors, inspect.isclass)
    if issubclass(kind, errors.DomainError) and kind is not errors.DomainError
]


def test_every_domain_error_has_one_entry_in_the_table_and_no_status_of_its_own() -> None:
    assert set(KINDS) == set(HTTP)
    for kind in KINDS:
        assert not hasattr(kind, "status_code"), f"{kind.__name__} carries an HTTP status"


async def test_storage_raises_domain_errors(database: Any) -> None:
    store = Z3Store(database)
    with pytest.raises(errors.NotFound, match="There is no bucket 'letters'"):
        await store.delete_bucket("letters")
    await store.put(Z3Location("letters", "a.pdf"), b"%PDF-1.4", "application/pdf")
    with pytest.raises(errors.Conflict, match="not empty"):
        await store.delete_bucket("letters")


def failing_app(error: Exception) -> FastAPI:
    """One error raised behind each of the three route classes."""
    app = FastAPI()
    for prefix, route_class in (("/fhir", FHIRRoute), ("/sdk", SDKRoute), ("/oauth", OAuthRoute)):
        router = APIRouter(route_class=route_class)

        @router.get("/fail")
        async def fail() -> None:
            raise error

        app.include_router(router, prefix=prefix)
    return app


async def answers(error: Exception) -> dict[str, httpx.Response]:
    transport = httpx.ASGITransport(app=failing_app(error))
    async with httpx.AsyncClient(transport=transport, base_url="http://host") as http:
        return {prefix: await http.get(f"/{prefix}/fail") for prefix in ("fhir", "sdk", "oauth")}


@pytest.mark.parametrize(
    ("error", "status", "issue", "oauth"),
    [
        (errors.Conflict("The bucket is not empty.", expression=["bucket"]), 409, "conflict", "invalid_request"),
        (errors.Invalid("Bad scope.", oauth_error="invalid_scope"), 400, "invalid", "invalid_scope"),
        (errors.Conflict("Stored twice.", issue_code="duplicate"), 409, "duplicate", "invalid_request"),
        (errors.Unauthorized("Who are you?", headers={"www-authenticate": "Basic"}), 401, "login", "invalid_client"),
        (errors.TooManyRequests("Slow down.", headers={"retry-after": "1"}), 429, "throttled", "slow_down"),
        (errors.Unavailable("Starting.", headers={"retry-after": "1"}), 503, "transient", "temporarily_unavailable"),
    ],
)
async def test_one_error_three_renderings(error: errors.DomainError, status: int, issue: str, oauth: str) -> None:
    found = await answers(error)
    assert {response.status_code for response in found.values()} == {status} == {status_of(error)}
    outcome = found["fhir"].json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == issue and outcome["issue"][0]["diagnostics"] == error.diagnostics
    if error.expression:
        assert outcome["issue"][0]["expression"] == error.expression
    assert found["sdk"].json() == {"message": error.diagnostics, "code": status}
    assert found["oauth"].json() == {"error": oauth, "error_description": error.diagnostics}
    assert found["oauth"].headers["cache-control"] == "no-store"
    for name, value in error.headers.items():
        assert {response.headers[name] for response in found.values()} == {value}


async def test_an_unexpected_failure_is_an_incident_in_each_shape_never_a_trace() -> None:
    found = await answers(KeyError("secret internals"))
    assert {response.status_code for response in found.values()} == {500}
    issue = found["fhir"].json()["issue"][0]
    assert (issue["severity"], issue["code"]) == ("fatal", "exception")
    assert found["oauth"].json()["error"] == "server_error"
    for response in found.values():
        assert "quote incident" in response.text and "secret internals" not in response.text


@pytest.fixture
async def not_started(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    FaxModule(settings).install(app)  # no lifespan: the runtime is not built
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host") as http:
        yield http


async def test_the_token_endpoint_answers_through_the_shared_rendering(not_started: httpx.AsyncClient) -> None:
    form = {"grant_type": "client_credentials", "client_id": "a", "client_secret": "b"}
    response = await not_started.post("/oauth/token", data=form)
    assert response.status_code == 503
    assert response.json() == {
        "error": "temporarily_unavailable",
        "error_description": "The server is starting or stopping; retry in a moment.",
    }
    assert response.headers["cache-control"] == "no-store"
    fax = await not_started.post("/fax/v1/send", json={})
    assert (fax.status_code, fax.json()["code"]) == (503, 503)


async def test_a_storage_conflict_reaches_an_sdk_caller_as_message_and_code(
    api: httpx.AsyncClient, database: Any
) -> None:
    await Z3Store(database).put(Z3Location("letters", "a.pdf"), b"%PDF-1.4", "application/pdf")
    await Z3Store(database).create_bucket("letters")
    response = await api.delete("/v1/z3/letters")
    assert response.status_code == 409
    assert response.json() == {
        "message": "The bucket 'letters' is not empty; delete its objects first.",
        "code": 409,
    }
    assert await Z3Store(database).bucket_exists("letters")
