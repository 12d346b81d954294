"""One gate for every access decision: search results, included resources, per-id rules, scopes on every action."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from fhir_fax.auth.clients import Clients
from fhir_fax.auth.policies import Rule, beyond, id_scope, parse_policy
from fhir_fax.auth.scopes import parse_scopes, permits_action
from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import seed_request, stored_counts

EVERYTHING = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}
SEARCH_COMMUNICATIONS = {"rule": [{"resource": "FHIR:Communication", "action": "FHIR:Search", "effect": "Allow"}]}


@asynccontextmanager
async def as_client(
    api: httpx.AsyncClient, database: Any, policy: dict[str, Any], scope: str = ""
) -> AsyncIterator[httpx.AsyncClient]:
    """Another HTTP client on the same app, holding a token of a new client with ``policy`` (and ``scope``)."""
    record, secret = await Clients(database).create("limited", policy)
    async with httpx.AsyncClient(transport=api._transport, base_url="http://fhir.test") as other:
        form = {"grant_type": "client_credentials", "client_id": record["clientId"], "client_secret": secret}
        token = await other.post("/oauth/token", data={**form, "scope": scope} if scope else form)
        assert token.status_code == 200, token.text
        other.headers["authorization"] = f"Bearer {token.json()['access_token']}"
        yield other


async def communication(api: httpx.AsyncClient, patient: str = "maria-lopez") -> str:
    body = {"resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{patient}"}}
    created = await api.post("/fhir/Communication", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def shown(bundle: dict[str, Any], mode: str | None = None) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if mode is None or e["search"]["mode"] == mode
    }


async def searches_audited(database: Any) -> list[dict[str, Any]]:
    return await database["AuditEvent"].find({"subtype.code": "search-type"}).to_list(None)


async def test_included_resources_are_those_the_client_may_read(fax_api: httpx.AsyncClient, database: Any) -> None:
    fax = await communication(fax_api)
    async with as_client(fax_api, database, SEARCH_COMMUNICATIONS) as searcher:
        found = await searcher.get("/fhir/Communication", params={"_include": "Communication:subject"})
        assert found.status_code == 200
        assert shown(found.json()) == {f"Communication/{fax}"}, "the Patient was included before"
        [event] = await searches_audited(database)
        assert {"what": {"reference": f"Communication/{fax}"}} in event["entity"]
        # _revinclude: a client that may only search Patients gets no Communications with them.
    patients_only = {"rule": [{"resource": "FHIR:Patient", "action": "FHIR:Search", "effect": "Allow"}]}
    async with as_client(fax_api, database, patients_only) as searcher:
        found = await searcher.get(
            "/fhir/Patient", params={"_id": "maria-lopez", "_revinclude": "Communication:subject"}
        )
        assert shown(found.json()) == {"Patient/maria-lopez"}
    # With read access to Patients as well, the Patient is included.
    wider = {"rule": [*SEARCH_COMMUNICATIONS["rule"], {"resource": "FHIR:Patient", "action": "FHIR:Read",
                                                         "effect": "Allow"}]}  # fmt: skip
    async with as_client(fax_api, database, wider) as searcher:
        found = await searcher.get("/fhir/Communication", params={"_include": "Communication:subject"})
        assert shown(found.json(), "include") == {"Patient/maria-lopez"}


async def test_a_per_id_deny_hides_the_resource_from_search(fax_api: httpx.AsyncClient, database: Any) -> None:
    hidden, visible = await communication(fax_api), await communication(fax_api)
    policy = {
        "rule": [
            {"resource": "FHIR:Communication", "action": ["FHIR:Read", "FHIR:Search"], "effect": "Allow"},
            {"resource": f"FHIR:Communication:{hidden}", "action": "FHIR:*", "effect": "Deny"},
        ]
    }
    async with as_client(fax_api, database, policy) as client:
        refused = await client.get(f"/fhir/Communication/{hidden}")
        assert refused.status_code == 403
        assert f"does not allow FHIR:Read on FHIR:Communication:{hidden}" in refused.json()["issue"][0]["diagnostics"]
        by_id = await client.get("/fhir/Communication", params={"_id": hidden, "_total": "accurate"})
        assert by_id.status_code == 200
        assert by_id.json()["total"] == 0 and "entry" not in by_id.json(), "returned what a read refuses before"
        everything = await client.get("/fhir/Communication", params={"_total": "accurate", "_count": "1"})
        assert everything.json()["total"] == 1, "the total counts only what may be shown"
        assert shown(everything.json()) == {f"Communication/{visible}"}
        assert "next" not in {link["relation"] for link in everything.json()["link"]}, "pages stay right"
        posted = await client.post("/fhir/Communication/_search", data={"_id": hidden})
        assert "entry" not in posted.json()
    events = await searches_audited(database)
    assert all({"what": {"reference": f"Communication/{hidden}"}} not in e.get("entity", []) for e in events)


async def test_per_id_allows_narrow_a_search(fax_api: httpx.AsyncClient, database: Any) -> None:
    mine, other = await communication(fax_api), await communication(fax_api)
    policy = {"rule": [{"resource": f"FHIR:Communication:{mine}", "action": "FHIR:Search", "effect": "Allow"}]}
    async with as_client(fax_api, database, policy) as client:
        found = await client.get("/fhir/Communication", params={"_total": "accurate"})
        assert found.status_code == 200, found.text
        assert shown(found.json()) == {f"Communication/{mine}"} and found.json()["total"] == 1
        assert other not in found.text
    [event] = await searches_audited(database)
    assert {"what": {"reference": f"Communication/{mine}"}} in event["entity"]
    assert {"what": {"reference": f"Communication/{other}"}} not in event["entity"]


async def test_a_search_the_policy_refuses_entirely_is_refused_up_front(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    policy = {
        "rule": [
            {"resource": "FHIR:*", "action": "FHIR:*", "effect": "Allow"},
            {"resource": "FHIR:Communication", "action": "FHIR:Read", "effect": "Deny"},
        ]
    }
    await communication(fax_api)
    async with as_client(fax_api, database, policy) as client:
        refused = await client.get("/fhir/Communication")
        assert refused.status_code == 403
        assert "does not allow FHIR:Read on FHIR:Communication" in refused.json()["issue"][0]["diagnostics"]
    assert await searches_audited(database) == []


async def test_scopes_narrow_documents_faxes_and_clients(fax_api: httpx.AsyncClient, database: Any) -> None:
    """A token scoped to system/Patient.rs could presign any document download before."""
    before = await stored_counts(database)
    async with as_client(fax_api, database, EVERYTHING, scope="system/Patient.rs") as client:
        for method, path, body in (
            ("POST", "/v1/z3/my-bucket/path/to/document.pdf", {"action": "download"}),
            ("POST", "/v1/z3/my-bucket/new.pdf", {"action": "upload"}),
            ("GET", "/v1/z3/my-bucket/path", None),
            ("DELETE", "/v1/z3/my-bucket/path/to/document.pdf", None),
            ("GET", "/v1/z3", None),
            ("PUT", "/v1/z3/another-bucket", None),
            ("POST", "/fax/v1/onboard", {"faxNumber": "+12223334445"}),
            ("GET", "/fax/v1/config", None),
            ("GET", "/v1/m2m", None),
            ("POST", "/v1/m2m", {"name": "x", "accessPolicy": EVERYTHING}),
        ):
            response = await client.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.text)
            assert "The token's scopes (system/Patient.rs) do not allow" in response.json()["message"], path
            assert "signedUrl" not in response.text
        assert (await client.get("/fhir/Patient/maria-lopez")).status_code == 200
    assert await stored_counts(database) == before
    assert await database.auth_clients.count_documents({}) == 2, "the admin and this client only"
    assert await database["fax_numbers"].count_documents({}) <= 1
    # Documents are read as part of a Communication: a Communication read scope lets the download through.
    async with as_client(fax_api, database, EVERYTHING, scope="system/Communication.r") as client:
        download = await client.post("/v1/z3/my-bucket/path/to/document.pdf", json={"action": "download"})
        assert download.status_code == 200 and download.json()["signedUrl"]
        assert (await client.get("/v1/z3")).status_code == 403, "bucket administration needs system/*"
    async with as_client(fax_api, database, EVERYTHING, scope="system/*.rs") as client:
        assert (await client.get("/v1/z3")).status_code == 200
        assert (await client.get("/fax/v1/config")).status_code == 200
    [event] = await database["AuditEvent"].find({"subtype.code": "document-read"}).to_list(None)
    assert event["entity"][0]["what"]["identifier"]["value"] == "z3://my-bucket/path/to/document.pdf"


async def test_previews_need_the_document_as_well(fax_api: httpx.AsyncClient, database: Any) -> None:
    sent = (await fax_api.post("/fax/v1/send", json=seed_request())).json()["communicationResource"]
    policy = {
        "rule": [
            {"resource": "FHIR:Communication", "action": "FHIR:Read", "effect": "Allow"},
            {"resource": "Z3:my-bucket/path/**", "action": "Z3:GetObject", "effect": "Deny"},
        ]
    }
    async with as_client(fax_api, database, policy) as client:
        refused = await client.get(f"/fax/v1/faxes/{sent['id']}/preview", params={"page": "1"})
        assert refused.status_code == 403
        assert "Z3:GetObject on Z3:my-bucket/path/to/document.pdf" in refused.json()["message"]
        assert refused.headers["content-type"].startswith("application/json")
    assert await database["AuditEvent"].count_documents({"subtype.code": "preview"}) == 0
    async with as_client(fax_api, database, EVERYTHING, scope="system/Patient.r") as client:
        refused = await client.get(f"/fax/v1/faxes/{sent['id']}/preview", params={"page": "1"})
        assert refused.status_code == 403 and "The token's scopes" in refused.json()["message"]
    allowed = await fax_api.get(f"/fax/v1/faxes/{sent['id']}/preview", params={"page": "1"})
    assert allowed.status_code == 200 and allowed.headers["content-type"] == "image/png"
    [event] = await database["AuditEvent"].find({"subtype.code": "preview"}).to_list(None)
    assert {"what": {"reference": f"Communication/{sent['id']}"}} in event["entity"]


async def test_history_entries_pass_the_gate(fax_api: httpx.AsyncClient, database: Any) -> None:
    fax = await communication(fax_api)
    moved = {"resourceType": "Communication", "id": fax, "status": "completed",
             "subject": {"reference": "Patient/james-oneil"}}  # fmt: skip
    assert (await fax_api.put(f"/fhir/Communication/{fax}", json=moved)).status_code == 200
    policy = {
        "rule": [
            {"resource": "FHIR:Communication", "action": "FHIR:History", "effect": "Allow"},
            {"resource": f"FHIR:Communication:{fax}", "action": "FHIR:Read", "effect": "Deny"},
        ]
    }
    async with as_client(fax_api, database, policy) as client:
        refused = await client.get(f"/fhir/Communication/{fax}/_history")
        assert refused.status_code == 403
        assert f"FHIR:Read on FHIR:Communication:{fax}" in refused.json()["issue"][0]["diagnostics"]
        assert await database["AuditEvent"].count_documents({"subtype.code": "history-instance"}) == 0
        # History is its own permission: without a Deny on reading, it needs no FHIR:Read.
        other = await communication(fax_api)
        allowed = await client.get(f"/fhir/Communication/{other}/_history")
        assert allowed.status_code == 200 and allowed.json()["total"] == 1
    [event] = await database["AuditEvent"].find({"subtype.code": "history-instance"}).to_list(None)
    assert {"what": {"reference": f"Communication/{other}"}} in event["entity"]


# -- the decisions the gate is built on ------------------------------------------------------------------


def _rules(*rules: tuple[str | list[str], str | list[str], str]) -> tuple[Rule, ...]:
    return parse_policy({"rule": [{"resource": r, "action": a, "effect": e} for r, a, e in rules]})


@pytest.mark.parametrize(
    ("own", "granted", "reported"),
    [
        ([("*", "*", "Allow")], [("FHIR:Patient:1", "FHIR:Read", "Allow")], None),
        ([("FHIR:*", "FHIR:Read", "Allow")], [("FHIR:Patient:1", "FHIR:Read", "Allow")], None),
        ([("FHIR:*", "FHIR:Read", "Allow")], [("FHIR:Patient", "FHIR:*", "Allow")], "Allow FHIR:* on FHIR:Patient"),
        ([("FHIR:Patient", "FHIR:*", "Allow")], [("FHIR", "FHIR:Read", "Allow")], "Allow FHIR:Read on FHIR"),
        ([("Z3:letters/**", "Z3:GetObject", "Allow")], [("Z3:letters/2026/*", "Z3:GetObject", "Allow")], None),
        ([("Z3:letters/**", "Z3:GetObject", "Allow")], [("Z3:**", "Z3:GetObject", "Allow")], "on Z3:**"),
        ([("Z3:letters/**", "Z3:GetObject", "Allow")], [("Z3:letters-x/a", "Z3:GetObject", "Allow")], "letters-x"),
        ([("Fax:Fax:*", "Fax:Send", "Allow")], [("*", "Fax:Send", "Allow")], "Allow Fax:Send on *"),
        ([("*", "*", "Allow"), ("FHIR:Communication:x", "FHIR:Read", "Deny")], [("FHIR", "FHIR:*", "Allow")],
         "your policy denies FHIR:Read on FHIR:Communication:x"),
        ([("*", "*", "Allow"), ("FHIR:Communication:x", "FHIR:Read", "Deny")],
         [("FHIR", "FHIR:*", "Allow"), ("FHIR:Communication:x", "FHIR:*", "Deny")], None),
        ([("*", "*", "Allow"), ("Z3:a/*/x.pdf", "Z3:GetObject", "Deny")], [("Z3:a/b/*", "Z3:GetObject", "Allow")],
         "overlaps your Deny"),
        ([("Fax:Configuration", "Fax:GetConfiguration", "Allow")], [("*", "*", "Deny")], None),
    ],
)  # fmt: skip
def test_a_policy_within_another(
    own: list[tuple[str, str, str]], granted: list[tuple[str, str, str]], reported: str | None
) -> None:
    found = beyond(_rules(*granted), _rules(*own))
    if reported is None:
        assert found is None
    else:
        assert found is not None and reported in found


def test_per_id_rules_become_a_query_filter() -> None:
    rules = _rules(("FHIR:Communication", "FHIR:Search", "Allow"), ("FHIR:Communication:x", "FHIR:*", "Deny"))
    assert id_scope(rules, "FHIR:Search", "Communication").mongo_filter() == {"_id": {"$nin": ["x"]}}
    assert id_scope(rules, "FHIR:Search", "Patient").empty
    only = _rules((["FHIR:Communication:b", "FHIR:Communication:a"], "FHIR:Search", "Allow"))
    assert id_scope(only, "FHIR:Search", "Communication").mongo_filter() == {"_id": {"$in": ["a", "b"]}}
    denied = _rules(("*", "*", "Allow"), ("FHIR:Communication", "FHIR:Read", "Deny"))
    assert id_scope(denied, "FHIR:Read", "Communication").empty
    assert not id_scope(denied, "FHIR:Search", "Communication").empty


@pytest.mark.parametrize(
    ("scope", "action", "resource", "expected"),
    [
        ("system/Patient.rs", "Z3:GetObject", "Z3:b/k.pdf", False),
        ("system/Communication.r", "Z3:GetObject", "Z3:b/k.pdf", True),
        ("patient/Communication.r", "Z3:GetObject", "Z3:b/k.pdf", True),
        ("system/Communication.r", "Z3:PutObject", "Z3:b/k.pdf", False),
        ("system/Communication.c", "Fax:Send", "Fax:Fax", True),
        ("system/Communication.cruds", "Fax:GetConfiguration", "Fax:Configuration", False),
        ("user/*.r", "Fax:GetConfiguration", "Fax:Configuration", True),
        ("patient/*.cruds", "App:ListAllM2MClients", "App:M2MClient", False),
        ("system/*.s", "App:ListAllM2MClients", "App:M2MClient", True),
        ("system/*.crud", "Unknown:Thing", "Unknown", False),
        ("system/*.cruds", "Unknown:Thing", "Unknown", True),
    ],
)
def test_scopes_narrow_every_action(scope: str, action: str, resource: str, expected: bool) -> None:
    assert permits_action(parse_scopes(scope), action, resource) is expected


async def test_a_listing_leaves_out_objects_the_policy_denies(fax_api: httpx.AsyncClient, database: Any) -> None:
    for key in ("letters/a.pdf", "letters/private/b.pdf"):
        await Z3Store(database).put(Z3Location("my-bucket", key), b"%PDF-1.4", "application/pdf")
    policy = {
        "rule": [
            {"resource": "Z3:my-bucket/**", "action": "Z3:ListObjects", "effect": "Allow"},
            {"resource": "Z3:my-bucket/letters/private/**", "action": "Z3:ListObjects", "effect": "Deny"},
        ]
    }
    async with as_client(fax_api, database, policy) as client:
        listed = await client.get("/v1/z3/my-bucket/letters/")
        assert listed.status_code == 200, listed.text
        assert [o["key"] for o in listed.json()] == ["letters/a.pdf"], "the private one was listed before"
        refused = await client.get("/v1/z3/my-bucket/letters/private/")
        assert refused.status_code == 403
        assert "does not allow Z3:ListObjects on Z3:my-bucket/letters/private/" in refused.json()["message"]
