"""The audit trail: sends, status changes, reads of Communications and refused access, searchable by patient."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from fhir_fax.fax.worker import create_worker
from fhir_fax.fhir.models import validate_resource
from fhir_fax.settings import Settings

from helpers import ADMIN_ID, SEED_SENDER, serving


def events(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def kinds(found: list[dict[str, Any]]) -> list[str]:
    return sorted(e["subtype"][0]["code"] for e in found)


async def test_a_fax_leaves_an_accounting_of_disclosures(fax_settings: Settings, database: Any) -> None:
    settings = fax_settings.model_copy(update={"worker_enabled": False, "simulator_speed": 1000.0})
    async with serving(settings, database) as api:
        await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        body = {
            "media": "z3://fixtures/referral-letter.pdf", "quality": "fine", "sender": SEED_SENDER,
            "recipientNumber": "+16175550143", "patient": "Patient/maria-lopez",
        }  # fmt: skip
        communication = (await api.post("/fax/v1/send", json=body)).json()["communicationResource"]
        await create_worker(settings, database).step()  # PROCESSING, then handed to the carrier
        assert (await api.get(f"/fhir/Communication/{communication['id']}")).status_code == 200
        assert (await api.get("/fhir/Communication", params={"patient": "maria-lopez"})).status_code == 200

        trail = events(
            (await api.get("/fhir/AuditEvent", params={"patient": "Patient/maria-lopez", "_count": "50"})).json()
        )
        assert kinds(trail) == ["fax-status", "read", "search-type", "send-fax"]
        sent = next(e for e in trail if e["subtype"][0]["code"] == "send-fax")
        assert sent["action"] == "C" and sent["outcome"] == "0"
        assert sent["agent"][0]["who"]["identifier"]["value"] == ADMIN_ID
        assert sent["agent"][0]["network"]["address"] == "127.0.0.1"
        assert {"what": {"reference": f"Communication/{communication['id']}"}} in sent["entity"]
        assert {"what": {"reference": "Patient/maria-lopez"}} in sent["entity"]
        by_entity = events(
            (await api.get("/fhir/AuditEvent", params={"entity": f"Communication/{communication['id']}"})).json()
        )
        assert len(by_entity) == len(trail)
        assert events((await api.get("/fhir/AuditEvent", params={"patient": "james-oneil"})).json()) == []
        # The server stores these without checking them again: they must be valid, and unchanged by the check.
        stored = (await api.get(f"/fhir/Communication/{communication['id']}")).json()
        for resource in [communication, stored, *trail]:
            assert validate_resource(resource, resource["resourceType"]) == resource


async def test_concurrent_reads_are_each_audited(fax_settings: Settings, database: Any) -> None:
    """Events of concurrent requests are written together, and every request's event is stored."""
    settings = fax_settings.model_copy(update={"worker_enabled": False})
    async with serving(settings, database) as api:
        await api.post("/fax/v1/onboard", json={"faxNumber": "+12223334444"})
        body = {"media": "z3://fixtures/referral-letter.pdf", "quality": "fine", "sender": SEED_SENDER,
                "recipientNumber": "+16175550143"}  # fmt: skip
        communication = (await api.post("/fax/v1/send", json=body)).json()["communicationResource"]
        reads = await asyncio.gather(*(api.get(f"/fhir/Communication/{communication['id']}") for _ in range(40)))
        assert {r.status_code for r in reads} == {200}
    assert await database["AuditEvent"].count_documents({"subtype.code": "read"}) == 40
    assert await database["AuditEvent"].count_documents({"subtype.code": "send-fax"}) == 1


async def test_refused_access_is_audited(fax_settings: Settings, database: Any) -> None:
    async with serving(fax_settings, database, authenticated=False) as anonymous:
        assert (await anonymous.get("/fhir/Communication")).status_code == 401
    async with serving(fax_settings, database) as api:
        refused = events((await api.get("/fhir/AuditEvent", params={"outcome": "4"})).json())
        assert refused and refused[0]["outcomeDesc"].startswith("authenticate on - refused: no bearer token")
        assert refused[0]["agent"][0]["who"]["display"] == "anonymous"


async def test_other_reads_are_not_audited(api: httpx.AsyncClient, database: Any) -> None:
    created = await api.post("/fhir/Patient", json={"resourceType": "Patient"})
    await api.get(f"/fhir/Patient/{created.json()['id']}")
    assert await database["AuditEvent"].count_documents({}) == 0
