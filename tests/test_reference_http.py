"""References looked up on another FHIR server over HTTP: a real second server and a misbehaving one."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_fax.auth.clients import Clients
from fhir_fax.embedded import free_port
from fhir_fax.settings import Settings

from helpers import (
    BOOTSTRAP,
    FHIR_JSON,
    MEDIA,
    SEED_RECIPIENT,
    login,
    seed_request,
    serving_fax,
    stored_counts,
)
from processes import FaxServer, ServerProcess

ODD_SERVER = Path(__file__).resolve().parent / "servers" / "odd_fhir.py"
NOTHING = {"Communication": 0, "fax_jobs": 0, "fax_idempotency": 0}


@pytest.fixture(scope="module")
def reference_server(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Iterator[FaxServer]:
    """A second fhir-fax server process holding the fixtures, on its own database."""
    env = {"FHIR_FAX_MONGODB_URI": mongo_uri, "FHIR_FAX_DATABASE_NAME": f"ref_{uuid.uuid4().hex[:8]}"}
    server = FaxServer(tmp_path_factory.mktemp("reference") / "data", "--load-fixtures", env=env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def odd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        [sys.executable, str(ODD_SERVER), "{port}"], log_dir=tmp_path_factory.mktemp("odd"), ready_path="/ready"
    )
    yield server
    server.stop()


async def app_with_reference_base(
    tmp_path: Path, database: Any, base: str, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    config = Settings(
        data_dir=tmp_path / "data",
        base_url="http://fhir.test",
        reference_fhir_base=base,
        _env_file=None,
        **BOOTSTRAP,
        **settings,
    )
    async with serving_fax(config, database) as api:
        yield api


@pytest.fixture
async def remote_api(tmp_path: Path, database: Any, reference_server: FaxServer) -> AsyncIterator[httpx.AsyncClient]:
    service_token = reference_server.token()  # the second server wants its own token
    async for api in app_with_reference_base(
        tmp_path, database, f"{reference_server.url}/fhir", reference_fhir_token=service_token
    ):
        yield api


@pytest.mark.e2e
async def test_references_resolve_on_the_other_server(
    remote_api: httpx.AsyncClient, database: Any, reference_server: FaxServer
) -> None:
    body = seed_request(media=MEDIA, patient="Patient/maria-lopez")
    response = await remote_api.post("/fax/v1/send", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["communicationResource"]["recipient"] == [{"reference": SEED_RECIPIENT}]
    assert await database["Practitioner"].count_documents({}) == 0, "nothing was looked up locally"
    job = await database.fax_jobs.find_one({})
    assert job["to_number"] == "+16175550143"  # the number held by the other server


@pytest.mark.e2e
async def test_a_resource_missing_or_deleted_on_the_other_server_is_422(
    remote_api: httpx.AsyncClient, database: Any, reference_server: FaxServer
) -> None:
    missing = await remote_api.post("/fax/v1/send", json=seed_request(recipient="Practitioner/nope", media=MEDIA))
    assert missing.status_code == 422
    assert f"recipient: Practitioner/nope does not exist on {reference_server.url}/fhir" in missing.json()["message"]
    async with httpx.AsyncClient(base_url=f"{reference_server.url}/fhir", headers=reference_server.headers) as other:
        created = (
            await other.post(
                "/Practitioner",
                json={"resourceType": "Practitioner", "telecom": [{"system": "fax", "value": "+16175550190"}]},
                headers=FHIR_JSON,
            )
        ).json()
        assert (await other.delete(f"/Practitioner/{created['id']}")).status_code == 204
    deleted = await remote_api.post(
        "/fax/v1/send", json=seed_request(recipient=f"Practitioner/{created['id']}", media=MEDIA)
    )
    assert deleted.status_code == 422
    assert "was deleted on" in deleted.json()["message"]
    assert await stored_counts(database) == NOTHING


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("prefix", "status", "message"),
    [
        ("slow", 504, "did not answer for HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964 in time"),
        ("html", 502, "did not answer with the HealthcareService/79ac80be-e0c5-4d15-8733-dcadd807f964 resource"),
        ("wrong", 502, "did not answer with the HealthcareService/"),
        ("broken", 502, "answered 500 for HealthcareService/"),
    ],
)
async def test_misbehaving_servers_give_clear_errors_never_500(
    tmp_path: Path, database: Any, odd_server: ServerProcess, prefix: str, status: int, message: str
) -> None:
    base = f"{odd_server.url}/{prefix}/fhir"
    async for api in app_with_reference_base(tmp_path, database, base, reference_timeout_seconds=0.5):
        response = await api.post("/fax/v1/send", json=seed_request(media=MEDIA))
        assert response.status_code == status, response.text
        assert response.json()["message"].startswith("sender: ")
        assert message in response.json()["message"]
        fhir = await api.post(
            "/fhir/Communication/$send-fax",
            json={
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "media", "valueUrl": MEDIA},
                    {"name": "quality", "valueCode": "fine"},
                    {"name": "sender", "valueReference": {"reference": "Organization/o1"}},
                    {"name": "recipientNumber", "valueString": "+12223334444"},
                ],
            },
            headers=FHIR_JSON,
        )
        assert fhir.status_code == status
        assert fhir.json()["issue"][0]["expression"] == ["sender"]
    assert await stored_counts(database) == NOTHING


async def test_an_unreachable_server_is_502(tmp_path: Path, database: Any) -> None:
    async for api in app_with_reference_base(tmp_path, database, f"http://127.0.0.1:{free_port()}/fhir"):
        response = await api.post("/fax/v1/send", json=seed_request(media=MEDIA))
        assert response.status_code == 502
        assert "could not be reached" in response.json()["message"]
    assert await stored_counts(database) == NOTHING


@pytest.mark.e2e
async def test_the_callers_token_is_forwarded_unless_a_service_token_is_set(
    tmp_path: Path, database: Any, odd_server: ServerProcess
) -> None:
    base = f"{odd_server.url}/guarded/fhir"
    allow_all = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}
    other, other_secret = await Clients(database).create("other", allow_all)
    async for api in app_with_reference_base(tmp_path, database, base):
        admin = api.headers["authorization"]
        async with httpx.AsyncClient() as http:
            await http.post(f"{odd_server.url}/guarded/allow", json={"authorization": admin})
        allowed = await api.post("/fax/v1/send", json=seed_request(media=MEDIA))
        assert allowed.status_code == 200, "the other server accepted the forwarded token"
        await login(api, other["clientId"], other_secret)  # a token the other server does not know
        refused = await api.post("/fax/v1/send", json=seed_request(media=MEDIA))
        assert refused.status_code == 403
        assert "refused to show HealthcareService/" in refused.json()["message"]
        unknown_to_them = api.headers["authorization"]
    async for api in app_with_reference_base(tmp_path, database, base, reference_fhir_token="good"):
        await login(api, other["clientId"], other_secret)
        served = await api.post("/fax/v1/send", json=seed_request(media=MEDIA))
        assert served.status_code == 200
    async with httpx.AsyncClient() as http:
        seen = (await http.get(f"{odd_server.url}/guarded/seen")).json()
    assert seen[-2:] == ["Bearer good", "Bearer good"], "sender and recipient fetched with the service token"
    assert seen.count(unknown_to_them) == 2, (
        "forwarded for sender and recipient (refused), never once a service token is set"
    )
    assert (await stored_counts(database))["Communication"] == 2
