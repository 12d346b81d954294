"""Refusals of unauthenticated requests are audited in aggregate: one AuditEvent per address and reason per window."""

from __future__ import annotations

import asyncio
from typing import Any

from fhir_fax.audit import REFUSAL_COUNT, RefusalAggregator
from fhir_fax.auth.clients import Clients
from fhir_fax.fhir.models import validate_resource
from fhir_fax.fhir.search_params import default_registry
from fhir_fax.fhir.store import ResourceStore
from fhir_fax.settings import Settings

from helpers import ADMIN_ID, login, serving

ATTACKER = "198.51.100.23"


def count_of(event: dict[str, Any]) -> int:
    return next(e["valueInteger"] for e in event["extension"] if e["url"] == REFUSAL_COUNT)


async def refusals(database: Any) -> list[dict[str, Any]]:
    return await database["AuditEvent"].find({"subtype.code": "access-refused"}).to_list(None)


async def test_a_flood_of_unauthenticated_requests_is_one_event_per_reason(settings: Settings, database: Any) -> None:
    quiet = settings.model_copy(update={"worker_enabled": False})
    async with serving(quiet, database, authenticated=False, peer=(ATTACKER, 5000)) as anonymous:
        no_token = await asyncio.gather(*(anonymous.get("/fhir/Communication") for _ in range(60)))
        bad_token = [
            await anonymous.get("/fhir/Patient", headers={"authorization": "Bearer not-a-jwt"}) for _ in range(25)
        ]
        assert {r.status_code for r in no_token + bad_token} == {401}
        assert await refusals(database) == [], "nothing is written per request"
    stored = await refusals(database)  # written when the app stopped
    assert len(stored) == 2, [e["outcomeDesc"] for e in stored]
    by_reason = {e["outcomeDesc"].split(" (")[0]: e for e in stored}
    no_token_event = by_reason["authenticate on - refused: no bearer token"]
    bad_token_event = by_reason["authenticate on - refused: The bearer token is not a JWT."]
    assert (count_of(no_token_event), count_of(bad_token_event)) == (60, 25)
    for event in stored:
        assert event["agent"][0]["network"]["address"] == ATTACKER
        assert event["agent"][0]["who"]["display"] == "anonymous"
        assert event["period"]["start"] <= event["period"]["end"]
        assert (event["action"], event["outcome"]) == ("E", "4")
    assert "60 times" in no_token_event["outcomeDesc"]


async def test_aggregated_refusals_are_valid_and_searchable(settings: Settings, database: Any) -> None:
    async with serving(settings, database, authenticated=False) as anonymous:
        for _ in range(3):
            assert (await anonymous.get("/fhir/Communication")).status_code == 401
    async with serving(settings, database) as api:
        bundle = (await api.get("/fhir/AuditEvent", params={"outcome": "4"})).json()
    [event] = [e["resource"] for e in bundle["entry"]]
    assert count_of(event) == 3
    assert validate_resource(event, "AuditEvent") == event


async def test_failed_token_requests_are_audited_in_aggregate(settings: Settings, database: Any) -> None:
    quiet = settings.model_copy(update={"worker_enabled": False})
    async with serving(quiet, database, authenticated=False, peer=(ATTACKER, 5000)) as attacker:
        form = {"grant_type": "client_credentials", "client_id": ADMIN_ID}
        for n in range(13):
            await attacker.post("/oauth/token", data={**form, "client_secret": f"guess-{n}"})
    descriptions = {e["outcomeDesc"].split(" (")[0]: count_of(e) for e in await refusals(database)}
    assert descriptions == {
        f"token on Client/{ADMIN_ID} refused: wrong secret, or no such client": 10,
        f"token on Client/{ADMIN_ID} refused: locked out after too many failed attempts from this address": 3,
    }


async def test_refusals_from_authenticated_clients_are_still_written_one_by_one(
    settings: Settings, database: Any
) -> None:
    """A client with a valid token is accountable: each of its refusals names what it tried, at once."""
    record, secret = await Clients(database).create(
        "billing", {"rule": {"resource": "Fax:*", "action": "Fax:Send", "effect": "Allow"}}
    )
    async with serving(settings, database, authenticated=False) as api:
        await login(api, record["clientId"], secret)
        for _ in range(2):
            refused = await api.get("/fhir/Communication")
            assert refused.status_code == 403
        written = [e for e in await refusals(database) if e["agent"][0]["who"]["display"] == record["clientId"]]
        assert len(written) == 2


async def test_distinct_reasons_are_bounded_per_window(database: Any) -> None:
    """Attacker-chosen reasons (an invented issuer in each token) cannot turn aggregation back into one write each."""
    aggregator = RefusalAggregator(ResourceStore(database, default_registry().indexer), max_keys=5)
    for n in range(40):
        aggregator.add(address=f"203.0.113.{n % 3}", action="authenticate", resource="-", reason=f"issuer {n}")
    await aggregator.flush()
    written = await refusals(database)
    assert len(written) == 6
    overflow = [e for e in written if "distinct" in e["outcomeDesc"]]
    assert len(overflow) == 1 and count_of(overflow[0]) == 35
    assert sum(count_of(e) for e in written) == 40
