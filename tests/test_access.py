"""Access control on every route: 401 without a valid token, 403 without permission, and policy details."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fhir_fax.app import create_app
from fhir_fax.auth.clients import Clients
from fhir_fax.settings import Settings

from helpers import MEDIA, SEED_RECIPIENT, SEED_SENDER, login, seed_request, serving, stored_counts

# The allow-list of routes anyone may call, and why each is safe without a token.
PUBLIC = {
    ("GET", "/fhir/metadata"): "the CapabilityStatement",
    ("GET", "/fhir/.well-known/smart-configuration"): "SMART configuration",
    ("GET", "/.well-known/jwks.json"): "our public keys",
    ("POST", "/oauth/token"): "the token endpoint (client credentials are its check)",
    ("GET", "/oauth/authorize"): "the SMART sign-in page: a user's password is its check (test_smart_errors)",
    ("POST", "/oauth/authorize"): "the sign-in/consent/patient forms: password, CSRF token (test_smart_errors)",
    ("POST", "/oauth/introspect"): "RFC 7662: the app's own credentials are its check (test_smart_tokens)",
    ("POST", "/oauth/revoke"): "RFC 7009: the app's own credentials are its check (test_smart_tokens)",
    ("GET", "/.well-known/openid-configuration"): "OpenID Connect discovery",
    ("POST", "/fax/webhooks/{carrier}"): "carrier webhooks: verified by signature (test_webhooks, test_carriers)",
    ("GET", "/healthz"): "liveness",
    ("GET", "/apps/fax/"): "the fax app's page: static, no data; the app signs in through SMART",
    ("GET", "/apps/fax/config.json"): "the fax app's client id and API paths, all public anyway",
    ("GET", "/apps/fax/{name}"): "the fax app's static files (a fixed list; anything else 404)",
    ("PUT", "/v1/z3/{bucket}/{key}"): "upload to a signed URL: its signature is the permission (test_z3_urls)",
    ("GET", "/openapi.json"): "the API description",
    ("GET", "/docs"): "the API description",
    ("GET", "/docs/oauth2-redirect"): "the API description",
    ("GET", "/redoc"): "the API description",
    **{
        (method, path): "answers 405 (not offered) or 404 (no such path); touches nothing"
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        for path in ("/fhir", "/fhir/{path}")
    },
}
# Signed Z3 downloads need no token either: GET /v1/z3/{bucket}/{key} without a signature lists objects.
EXAMPLE_PATH_VALUES = {
    "resource_type": "Patient",
    "resource_id": "p1",
    "version_id": "1",
    "compartment_type": "Patient",
    "compartment_id": "p1",
    "bucket": "letters",
    "key": "a.pdf",
    "communication_id": "c1",
    "path": "Patient/p1/x/y/z",
    "record_id": "client-1",
    "carrier": "telnyx",
}
NOTHING_USEFUL = {"rule": [{"resource": "Nothing:*", "action": "Nothing:Do", "effect": "Allow"}]}


def route_table() -> set[tuple[str, str]]:
    """Every (method, path template) the application serves, read from ``app.routes`` (included routers
    expanded, routes hidden from the OpenAPI document included); HEAD is GET's own handler."""
    app = create_app(Settings(_env_file=None))
    table = set()
    for route in app.routes:
        contexts = list(route.effective_route_contexts()) if hasattr(route, "effective_route_contexts") else [route]
        for context in contexts:
            template = re.sub(r"\{(\w+):\w+\}", r"{\1}", context.path)  # {key:path} -> {key}
            table.update((method, template) for method in context.methods or () if method != "HEAD")
    return table


TABLE = route_table()
ROUTES = sorted((method, path.format(**EXAMPLE_PATH_VALUES)) for method, path in TABLE if (method, path) not in PUBLIC)


def test_the_route_list_covers_every_api() -> None:
    prefixes = {path.split("/")[1] for _, path in ROUTES}
    assert prefixes == {"fhir", "fax", "v1", "oauth"}, "only the fax app's static files are public under /apps"
    assert ("POST", "/v1/m2m") in ROUTES and ("GET", "/fax/v1/faxes/c1/preview") in ROUTES
    assert ("POST", "/oauth/launch") in ROUTES and ("POST", "/v1/smart-apps") in ROUTES
    assert len(ROUTES) >= 25
    assert set(PUBLIC) <= TABLE, "the allow-list names only routes that exist"


@pytest.fixture
async def anonymous(fax_settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(fax_settings, database, authenticated=False) as http:
        yield http


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_every_route_needs_a_token(anonymous: httpx.AsyncClient, database: Any, method: str, path: str) -> None:
    for headers in ({}, {"authorization": "Bearer not-a-token"}, {"authorization": "Basic YTpi"}):
        response = await anonymous.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].startswith('Bearer realm="fhir-fax"')
        body = response.json()
        if path.startswith("/fhir"):
            assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "login"
        else:
            assert body["code"] == 401 and body["message"]
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}


# Routes any valid token may call (they show the caller itself).
IDENTITY_ONLY = {("GET", "/v1/m2m/me")}
GUARDED = [route for route in ROUTES if route not in IDENTITY_ONLY]
EVERYTHING = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}


def _message(response: httpx.Response) -> str:
    body = response.json()
    return body["issue"][0]["diagnostics"] if body.get("resourceType") == "OperationOutcome" else body["message"]


async def _nothing_happened(database: Any) -> None:
    assert await stored_counts(database) == {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}
    successes = await database["AuditEvent"].find({"outcome": "0"}).to_list(None)
    assert successes == [], "no read or write on record"
    assert await database["z3_buckets"].count_documents({"_id": "letters"}) == 0, "no bucket made"


@pytest.mark.parametrize(("method", "path"), GUARDED, ids=[f"{m} {p}" for m, p in GUARDED])
async def test_every_route_needs_permission(
    anonymous: httpx.AsyncClient, database: Any, method: str, path: str
) -> None:
    record, secret = await Clients(database).create("powerless", NOTHING_USEFUL)
    await login(anonymous, record["clientId"], secret)
    response = await anonymous.request(method, path, json={"action": "download"})
    assert response.status_code == 403, (method, path, response.text)
    assert "access policy does not allow" in _message(response)
    await _nothing_happened(database)


@pytest.mark.parametrize(("method", "path"), GUARDED, ids=[f"{m} {p}" for m, p in GUARDED])
async def test_every_route_is_narrowed_by_scopes(
    anonymous: httpx.AsyncClient, database: Any, method: str, path: str
) -> None:
    """Scopes narrow every action: a token whose scopes grant nothing these routes touch gets nothing."""
    record, secret = await Clients(database).create("allowed everything", EVERYTHING)
    form = {"grant_type": "client_credentials", "client_id": record["clientId"], "client_secret": secret}
    token = await anonymous.post("/oauth/token", data={**form, "scope": "system/Basic.r"})
    anonymous.headers["authorization"] = f"Bearer {token.json()['access_token']}"
    response = await anonymous.request(method, path, json={"action": "download"})
    assert response.status_code == 403, (method, path, response.text)
    assert "The token's scopes (system/Basic.r) do not allow" in _message(response)
    await _nothing_happened(database)


async def policy_client(api: httpx.AsyncClient, database: Any, policy: dict[str, Any], scope: str = "") -> None:
    record, secret = await Clients(database).create("limited", policy)
    response = await api.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": record["clientId"],
            "client_secret": secret,
            "scope": scope,
        },
    )
    api.headers["authorization"] = f"Bearer {response.json()['access_token']}"


SEED_POLICY = {"rule": [{"resource": ["Fax:Fax:*"], "action": ["Fax:Send"], "effect": "Allow"}]}
READ_ALL = {"resource": ["FHIR:*", "Z3:*"], "action": ["FHIR:Read", "Z3:GetObject"], "effect": "Allow"}


async def test_sending_needs_read_access_to_what_is_sent(fax_api: httpx.AsyncClient, database: Any) -> None:
    await policy_client(fax_api, database, SEED_POLICY)
    refused = await fax_api.post("/fax/v1/send", json=seed_request())
    assert refused.status_code == 403
    assert f"FHIR:Read on FHIR:{SEED_SENDER.replace('/', ':')}" in refused.json()["message"]
    await policy_client(fax_api, database, {"rule": [*SEED_POLICY["rule"], READ_ALL]})
    assert (await fax_api.post("/fax/v1/send", json=seed_request())).status_code == 200
    no_document = {
        "rule": [
            *SEED_POLICY["rule"],
            READ_ALL,
            {"resource": "Z3:my-bucket/path/**", "action": "Z3:GetObject", "effect": "Deny"},
        ]
    }
    await policy_client(fax_api, database, no_document)
    denied = await fax_api.post("/fax/v1/send", json=seed_request())
    assert denied.status_code == 403 and "Z3:GetObject on Z3:my-bucket/path/to/document.pdf" in denied.json()["message"]
    assert (await stored_counts(database))["Communication"] == 1


async def test_z3_paths_in_policies(fax_api: httpx.AsyncClient, database: Any) -> None:
    policy = {"rule": [{"resource": "Z3:letters/**", "action": ["Z3:GetObject", "Z3:PutObject"], "effect": "Allow"}]}
    await policy_client(fax_api, database, policy)
    assert (await fax_api.post("/v1/z3/letters/2026/a.pdf", json={"action": "upload"})).status_code == 200
    for path in ("other/a.pdf", "letters-private/a.pdf", "letters/%2E%2E/other/a.pdf", "LETTERS/a.pdf"):
        response = await fax_api.post(f"/v1/z3/{path}", json={"action": "upload"})
        assert response.status_code in (400, 403), (path, response.text)
    # An encoded slash addresses letters/other/a.pdf: allowed, and the URL signs exactly that object.
    encoded_slash = await fax_api.post("/v1/z3/letters%2Fother/a.pdf", json={"action": "upload"})
    assert encoded_slash.json()["signedUrl"].startswith("http://fhir.test/v1/z3/letters/other/a.pdf?")
    sneaky = await fax_api.post("/v1/z3/other%2Fletters/a.pdf", json={"action": "upload"})
    assert sneaky.status_code == 403, "decided on the object actually addressed (bucket other)"


async def test_scopes_narrow_the_policy(fax_api: httpx.AsyncClient, database: Any) -> None:
    everything = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}
    await policy_client(fax_api, database, everything, scope="system/Communication.rs system/Practitioner.r")
    assert (await fax_api.get(f"/fhir/{SEED_RECIPIENT}")).status_code == 200
    assert (await fax_api.get("/fhir/Communication")).status_code == 200
    created = await fax_api.post("/fhir/Patient", json={"resourceType": "Patient"})
    assert created.status_code == 403
    cannot_send = await fax_api.post("/fax/v1/send", json=seed_request(media=MEDIA))
    assert cannot_send.status_code == 403, "sending creates a Communication: the scopes do not allow it"


async def test_a_deleted_client_loses_access_at_once(fax_api: httpx.AsyncClient, database: Any) -> None:
    record, secret = await Clients(database).create(
        "temporary", {"rule": {"resource": "*", "action": "*", "effect": "Allow"}}
    )
    await login(fax_api, record["clientId"], secret)
    assert (await fax_api.get("/fax/v1/config")).status_code == 200
    await Clients(database).delete(record["_id"])
    gone = await fax_api.get("/fax/v1/config")
    assert gone.status_code == 401 and "no longer exists" in gone.json()["message"]


async def test_signed_urls_and_webhooks_need_no_token(anonymous: httpx.AsyncClient, fax_api: httpx.AsyncClient) -> None:
    signed = (await fax_api.post("/v1/z3/my-bucket/path/to/document.pdf", json={"action": "download"})).json()
    assert signed["signedUrl"]
    assert (await anonymous.get("/fhir/metadata")).status_code == 200
    assert (await anonymous.get("/.well-known/jwks.json")).status_code == 200
    webhook = await anonymous.post("/fax/webhooks/telnyx", content=b"{}")
    assert webhook.status_code == 401 and "not accepted" in webhook.json()["message"], "verified by signature instead"
