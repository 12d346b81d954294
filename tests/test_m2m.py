"""M2M clients over HTTP in the SDK's shapes: secrets never shown but once, changes apply at once."""

from __future__ import annotations

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
