"""client-py (``fhirclient``), unmodified, finds the token endpoint through ``/metadata`` and uses the token.

client-py reads ``rest[0].security`` of the CapabilityStatement: the ``oauth-uris`` extension's ``token`` URL
makes it an OAuth 2.0 client; without it, it takes the server for an open one and sends no token at all.
Its backend flow (``authorize()`` with an app secret) is a client-credentials request at that URL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fhirclient import client
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRPermissionDeniedException

from helpers import ADMIN_ID, ADMIN_SECRET, FHIR_JSON
from processes import FaxServer


@pytest.fixture
def server(tmp_path: Path, mongo_uri: str) -> Iterator[FaxServer]:
    env = {"FHIR_FAX_MONGODB_URI": mongo_uri, "FHIR_FAX_DATABASE_NAME": f"client_py_{uuid.uuid4().hex[:8]}"}
    process = FaxServer(tmp_path / "data", env=env)
    try:
        yield process
    finally:
        process.stop()


def test_client_py_discovers_the_token_endpoint_and_gets_a_scoped_token(server: FaxServer) -> None:
    created = httpx.post(
        f"{server.url}/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Discovered"}]},
        headers={**FHIR_JSON, **server.headers},
    )
    assert created.status_code == 201, created.text
    settings = {
        "app_id": ADMIN_ID,
        "app_secret": ADMIN_SECRET,
        "api_base": f"{server.url}/fhir/",
        "scope": "openid system/Patient.rs",
    }
    smart = client.FHIRClient(settings=settings)
    assert smart.prepare() is False, "it found an authorization server, and has no token yet"
    assert smart.server.auth.auth_type == "oauth2"
    assert smart.server.auth.state["token_uri"] == f"{server.url}/oauth/token"
    smart.authorize()  # client credentials at the discovered endpoint, the secret sent as HTTP Basic
    assert smart.ready
    assert smart.launch_context["scope"] == "system/Patient.rs", "openid is not granted, so it is not stated"
    patient = Patient.read(created.json()["id"], smart.server)
    assert patient.name[0].family == "Discovered"
    with pytest.raises(FHIRPermissionDeniedException) as refused:
        smart.server.request_json("Communication")  # outside the token's scope: 403, not 401
    assert "The token's scopes (system/Patient.rs) do not allow" in refused.value.response.text
