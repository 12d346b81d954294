"""M2M clients over HTTP in the SDK's shapes: secrets never shown but once, changes apply at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from helpers import login

SEND_ONLY = {"rule": [{"resource": ["Fax:Fax:*"], "action": ["Fax:Send"], "effect": "Allow"}]}
CONFIG_ONLY = {"rule": [{"resource": "Fax:Configuration", "action": "Fax:GetConfiguration", "effect": "Allow"}]}


async def test_create_rotate_use_update_and_delete(api: httpx.AsyncClient, database: Any) -> None:
    created = await api.post(
        "/v1/m2m", json={"name": "billing", "description": "sends invoices", "accessPolicy": CONFIG_ONLY}
    )
    assert created.status_code == 201
    client = created.json()
    assert set(client) == {"id", "clientId", "name", "description", "accessPolicy"}, "no secret in the answer"
    secret = (await api.post(f"/v1/m2m/{client['id']}/rotate-secret")).json()["secret"]
    assert [c["name"] for c in (await api.get("/v1/m2m")).json()] == ["bootstrap admin", "billing"]
    assert (await api.get(f"/v1/m2m/{client['id']}")).json() == client

    async with httpx.AsyncClient(transport=api._transport, base_url="http://fhir.test") as as_billing:
        await login(as_billing, client["clientId"], secret)
        assert (await as_billing.get("/v1/m2m/me")).json()["id"] == client["id"]
        assert (await as_billing.get("/fax/v1/config")).status_code == 200
        assert (await as_billing.get("/v1/m2m")).status_code == 403
        changed = await api.patch(f"/v1/m2m/{client['id']}", json={"accessPolicy": SEND_ONLY})
        assert changed.json()["accessPolicy"] == SEND_ONLY
        assert (await as_billing.get("/fax/v1/config")).status_code == 403, "the new policy applies at once"
        assert (await api.delete(f"/v1/m2m/{client['id']}")).status_code == 204
        assert (await as_billing.get("/v1/m2m/me")).status_code == 401
    assert (await api.get(f"/v1/m2m/{client['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"description": "x", "accessPolicy": SEND_ONLY}, "name is required"),
        ({"name": "x"}, "accessPolicy is required"),
        (
            {"name": "x", "accessPolicy": {"rule": {"resource": "FHIR:*:1", "action": "FHIR:Read", "effect": "Allow"}}},
            "wildcard",
        ),
        ({"name": "x", "accessPolicy": SEND_ONLY, "secret": "mine"}, "Unknown fields: secret"),
        ({"name": 5, "accessPolicy": SEND_ONLY}, "name must be a string"),
    ],
)
async def test_bad_client_bodies(api: httpx.AsyncClient, database: Any, body: dict[str, Any], message: str) -> None:
    response = await api.post("/v1/m2m", json=body)
    assert response.status_code == 400 and message in response.json()["message"]
    assert await database.auth_clients.count_documents({}) == 1, "only the bootstrap admin"


async def test_unknown_clients_are_404(api: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/v1/m2m/nope"), ("PATCH", "/v1/m2m/nope"), ("DELETE", "/v1/m2m/nope")):
        response = await api.request(method, path, json={})
        assert response.status_code == 404 and "no M2M client" in response.json()["message"]
    assert (await api.post("/v1/m2m/nope/rotate-secret")).status_code == 404


async def test_bad_updates_change_nothing(api: httpx.AsyncClient) -> None:
    created = (await api.post("/v1/m2m", json={"name": "billing", "accessPolicy": SEND_ONLY})).json()
    bad_policy = {"accessPolicy": {"rule": {"resource": "FHIR", "action": "Read", "effect": "Allow"}}}
    for body, message in (
        (bad_policy, "must look like Service:Action"),
        ({"clientId": "x"}, "Unknown fields: clientId"),
    ):
        response = await api.patch(f"/v1/m2m/{created['id']}", json=body)
        assert response.status_code == 400 and message in response.json()["message"]
    assert (await api.get(f"/v1/m2m/{created['id']}")).json() == created


CLIENT_ADMIN = {
    "rule": [
        {"resource": "App:M2MClient", "action": ["App:CreateM2MClient", "App:UpdateM2MClient",
                                                  "App:RotateM2MClientSecret", "App:GetM2MClient",
                                                  "App:DeleteM2MClient"], "effect": "Allow"},
        {"resource": "Fax:Configuration", "action": "Fax:GetConfiguration", "effect": "Allow"},
    ]
}  # fmt: skip
EVERYTHING = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}


@asynccontextmanager
async def _client_admin(api: httpx.AsyncClient) -> AsyncIterator[tuple[dict[str, Any], httpx.AsyncClient]]:
    """A client that may create, update and rotate clients (and read the fax configuration), logged in."""
    created = (await api.post("/v1/m2m", json={"name": "client admin", "accessPolicy": CLIENT_ADMIN})).json()
    secret = (await api.post(f"/v1/m2m/{created['id']}/rotate-secret")).json()["secret"]
    async with httpx.AsyncClient(transport=api._transport, base_url="http://fhir.test") as other:
        await login(other, created["clientId"], secret)
        yield created, other


async def test_a_client_cannot_mint_a_client_with_more_rights(api: httpx.AsyncClient, database: Any) -> None:
    async with _client_admin(api) as (_, client_admin):
        for policy, what in (
            (EVERYTHING, "Allow * on *"),
            (SEND_ONLY, "Allow Fax:Send on Fax:Fax:*"),
            ({"rule": [{"resource": "Fax:*", "action": "Fax:GetConfiguration", "effect": "Allow"}]},
             "Allow Fax:GetConfiguration on Fax:*"),
        ):  # fmt: skip
            response = await client_admin.post("/v1/m2m", json={"name": "stronger", "accessPolicy": policy})
            assert response.status_code == 403, response.text
            assert f"grants rights your own policy does not: {what}" in response.json()["message"]
        assert await database.auth_clients.count_documents({}) == 2, "the admin and the client admin only"
        weaker = await client_admin.post("/v1/m2m", json={"name": "config reader", "accessPolicy": CONFIG_ONLY})
        assert weaker.status_code == 201, weaker.text


async def test_a_client_cannot_widen_itself_or_take_over_a_stronger_client(
    api: httpx.AsyncClient, database: Any
) -> None:
    admin = next(c for c in (await api.get("/v1/m2m")).json() if c["name"] == "bootstrap admin")
    stored_admin = await database.auth_clients.find_one({"_id": admin["id"]})
    async with _client_admin(api) as (me, client_admin):
        widen = await client_admin.patch(f"/v1/m2m/{me['id']}", json={"accessPolicy": EVERYTHING})
        assert widen.status_code == 403 and "grants rights your own policy does not" in widen.json()["message"]
        assert (await client_admin.get(f"/v1/m2m/{me['id']}")).json()["accessPolicy"] == CLIENT_ADMIN
        for method, path, body in (
            ("POST", f"/v1/m2m/{admin['id']}/rotate-secret", None),
            ("PATCH", f"/v1/m2m/{admin['id']}", {"description": "mine now"}),
            ("PATCH", f"/v1/m2m/{admin['id']}", {"accessPolicy": CONFIG_ONLY}),
            ("DELETE", f"/v1/m2m/{admin['id']}", None),
        ):
            response = await client_admin.request(method, path, json=body)
            assert response.status_code == 403, (path, response.text)
            assert "has rights your own policy does not" in response.json()["message"]
            assert "secret" not in response.json()
        assert await database.auth_clients.find_one({"_id": admin["id"]}) == stored_admin
        # Narrowing itself is allowed (and takes effect at once).
        narrower = {"rule": [CLIENT_ADMIN["rule"][0]]}
        assert (await client_admin.patch(f"/v1/m2m/{me['id']}", json={"accessPolicy": narrower})).status_code == 200
        assert (await client_admin.get("/fax/v1/config")).status_code == 403


async def test_a_scoped_token_cannot_create_clients(api: httpx.AsyncClient, database: Any) -> None:
    record = next(c for c in (await api.get("/v1/m2m")).json() if c["name"] == "bootstrap admin")
    secret = (await api.post(f"/v1/m2m/{record['id']}/rotate-secret")).json()["secret"]
    form = {"grant_type": "client_credentials", "client_id": record["clientId"], "client_secret": secret}
    token = (await api.post("/oauth/token", data={**form, "scope": "system/Communication.rs"})).json()
    response = await api.post(
        "/v1/m2m",
        json={"name": "escape", "accessPolicy": EVERYTHING},
        headers={"authorization": f"Bearer {token['access_token']}"},
    )
    assert response.status_code == 403 and "The token's scopes" in response.json()["message"]
    assert await database.auth_clients.count_documents({}) == 1


async def test_a_per_id_deny_hides_a_client_from_the_list(api: httpx.AsyncClient, database: Any) -> None:
    admin = next(c for c in (await api.get("/v1/m2m")).json() if c["name"] == "bootstrap admin")
    policy = {
        "rule": [
            {"resource": "App:M2MClient", "action": ["App:ListAllM2MClients", "App:GetM2MClient"], "effect": "Allow"},
            {"resource": f"App:M2MClient:{admin['id']}", "action": "App:*", "effect": "Deny"},
        ]
    }
    created = (await api.post("/v1/m2m", json={"name": "auditor", "accessPolicy": policy})).json()
    secret = (await api.post(f"/v1/m2m/{created['id']}/rotate-secret")).json()["secret"]
    async with httpx.AsyncClient(transport=api._transport, base_url="http://fhir.test") as auditor:
        await login(auditor, created["clientId"], secret)
        listed = await auditor.get("/v1/m2m")
        assert listed.status_code == 200
        assert [c["name"] for c in listed.json()] == ["auditor"], "GET /m2m/{admin} is refused, so is listing it"
        refused = await auditor.get(f"/v1/m2m/{admin['id']}")
        assert refused.status_code == 403 and "does not allow App:GetM2MClient" in refused.json()["message"]
