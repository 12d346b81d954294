"""History: pages with next/previous links, _since, _at, type-level history and strict parameter handling."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from fhir_fax.fhir.models import model_class

from helpers import FHIR_JSON


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((item["url"] for item in bundle["link"] if item["relation"] == relation), None)


def etags(bundle: dict[str, Any]) -> list[str]:
    return [e["response"]["etag"] for e in bundle.get("entry", [])]


def stamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def patient_with_versions(api: httpx.AsyncClient, versions: int) -> str:
    created = (await api.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)).json()
    for n in range(2, versions + 1):
        body = {"resourceType": "Patient", "id": created["id"], "name": [{"family": f"V{n}"}]}
        assert (await api.put(f"/fhir/Patient/{created['id']}", json=body, headers=FHIR_JSON)).status_code == 200
    return created["id"]


async def walk(api: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    pages = []
    next_url: str | None = url
    while next_url:
        response = await api.get(next_url)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        next_url = link(pages[-1], "next")
    return pages


async def test_instance_history_pages_with_next_and_previous_links(api: httpx.AsyncClient) -> None:
    patient_id = await patient_with_versions(api, 4)
    first = (await api.get(f"/fhir/Patient/{patient_id}/_history", params={"_count": "1"})).json()
    assert first["total"] == 4 and etags(first) == ['W/"4"']
    assert link(first, "previous") is None
    pages = await walk(api, f"/fhir/Patient/{patient_id}/_history?_count=1")
    assert [etags(p) for p in pages] == [['W/"4"'], ['W/"3"'], ['W/"2"'], ['W/"1"']]
    back = (await api.get(link(pages[-1], "previous"))).json()
    assert etags(back) == ['W/"2"']
    for page in pages:
        model_class("Bundle").model_validate(page)


async def test_history_pages_hold_while_new_versions_are_written(api: httpx.AsyncClient) -> None:
    patient_id = await patient_with_versions(api, 5)
    seen: list[str] = []
    url: str | None = f"/fhir/Patient/{patient_id}/_history?_count=2"
    n = 0
    while url:
        page = (await api.get(url)).json()
        seen += etags(page)
        n += 1
        body = {"resourceType": "Patient", "id": patient_id, "name": [{"family": f"During{n}"}]}
        await api.put(f"/fhir/Patient/{patient_id}", json=body, headers=FHIR_JSON)
        url = link(page, "next")
    assert seen == [f'W/"{v}"' for v in range(5, 0, -1)]


async def test_since_keeps_versions_written_from_then_on(api: httpx.AsyncClient) -> None:
    patient_id = await patient_with_versions(api, 2)
    await asyncio.sleep(0.01)
    middle = stamp()
    await asyncio.sleep(0.01)
    body = {"resourceType": "Patient", "id": patient_id, "active": True}
    await api.put(f"/fhir/Patient/{patient_id}", json=body, headers=FHIR_JSON)
    recent = (await api.get(f"/fhir/Patient/{patient_id}/_history", params={"_since": middle})).json()
    assert etags(recent) == ['W/"3"'] and "total" not in recent
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert "entry" not in (await api.get(f"/fhir/Patient/{patient_id}/_history", params={"_since": future})).json()
    everything = (await api.get("/fhir/Patient/_history", params={"_since": "2000-01-01T00:00:00Z"})).json()
    assert len(everything["entry"]) == 3


async def test_at_keeps_the_versions_current_during_the_range(api: httpx.AsyncClient) -> None:
    patient_id = await patient_with_versions(api, 2)
    await asyncio.sleep(0.01)
    between = stamp()  # version 2 is current here
    await asyncio.sleep(0.01)
    body = {"resourceType": "Patient", "id": patient_id, "active": True}
    await api.put(f"/fhir/Patient/{patient_id}", json=body, headers=FHIR_JSON)
    other = await patient_with_versions(api, 1)  # created after `between`: not current then
    at_then = (await api.get(f"/fhir/Patient/{patient_id}/_history", params={"_at": between})).json()
    assert etags(at_then) == ['W/"2"']
    type_then = (await api.get("/fhir/Patient/_history", params={"_at": between})).json()
    assert [(e["resource"]["id"], e["response"]["etag"]) for e in type_then["entry"]] == [(patient_id, 'W/"2"')]
    today = datetime.now(UTC).date().isoformat()
    whole_day = (await api.get("/fhir/Patient/_history", params={"_at": today, "_count": "2"})).json()
    pages = await walk(api, "/fhir/Patient/_history?_at=" + today + "&_count=2")
    assert etags(whole_day) == etags(pages[0])
    assert sorted((e["resource"]["id"], e["response"]["etag"]) for p in pages for e in p["entry"]) == sorted(
        [(patient_id, 'W/"1"'), (patient_id, 'W/"2"'), (patient_id, 'W/"3"'), (other, 'W/"1"')]
    )


async def test_type_history_lists_every_version_of_the_type_newest_first(api: httpx.AsyncClient) -> None:
    first = await patient_with_versions(api, 2)
    second = await patient_with_versions(api, 1)
    assert (await api.delete(f"/fhir/Patient/{first}")).status_code == 204
    await api.post("/fhir/Organization", json={"resourceType": "Organization"}, headers=FHIR_JSON)
    pages = await walk(api, "/fhir/Patient/_history?_count=2")
    entries = [e for p in pages for e in p["entry"]]
    assert [(e["fullUrl"].rsplit("/", 1)[1], e["request"]["method"]) for e in entries] == [
        (first, "DELETE"),
        (second, "POST"),
        (first, "PUT"),
        (first, "POST"),
    ]
    assert link(pages[0], "self") == "http://fhir.test/fhir/Patient/_history?_count=2"
    for page in pages:
        model_class("Bundle").model_validate(page)


@pytest.mark.parametrize(
    ("params", "message", "expression"),
    [
        ({"_list": "x"}, "Unknown history parameter '_list'", "_list"),
        ({"_since": "2026-11-30"}, "_since must be an instant with a time zone", "_since"),
        ({"_since": "yesterday"}, "not a FHIR date", "_since"),
        ({"_at": "lt2026"}, "_at takes a date without a prefix", "_at"),
        ({"_count": "0"}, "_count must be a whole number from 1", "_count"),
        ({"_count": "x"}, "_count must be a whole number from 1", "_count"),
    ],
)
@pytest.mark.parametrize("prefer", [None, "handling=strict"])
async def test_bad_history_parameters_are_400(
    api: httpx.AsyncClient, params: dict[str, str], message: str, expression: str, prefer: str | None
) -> None:
    patient_id = await patient_with_versions(api, 2)
    headers = {"prefer": prefer} if prefer else {}
    for url in (f"/fhir/Patient/{patient_id}/_history", "/fhir/Patient/_history"):
        response = await api.get(url, params=params, headers=headers)
        assert response.status_code == 400, response.text
        issue = response.json()["issue"][0]
        assert message in issue["diagnostics"] and issue["expression"] == [expression]


async def test_lenient_handling_ignores_unknown_history_parameters(api: httpx.AsyncClient) -> None:
    patient_id = await patient_with_versions(api, 2)
    response = await api.get(
        f"/fhir/Patient/{patient_id}/_history", params={"_list": "x"}, headers={"prefer": "handling=lenient"}
    )
    assert response.status_code == 200 and etags(response.json()) == ['W/"2"', 'W/"1"']


async def test_a_history_cursor_is_refused_on_another_history(api: httpx.AsyncClient) -> None:
    one = await patient_with_versions(api, 3)
    two = await patient_with_versions(api, 3)
    page = (await api.get(f"/fhir/Patient/{one}/_history", params={"_count": "1"})).json()
    cursor = httpx.URL(link(page, "next")).params["_cursor"]
    response = await api.get(f"/fhir/Patient/{two}/_history", params={"_count": "1", "_cursor": cursor})
    assert response.status_code == 400
    assert "_cursor belongs to another search" in response.json()["issue"][0]["diagnostics"]


async def test_history_of_unknown_type_or_resource_is_404(api: httpx.AsyncClient) -> None:
    assert (await api.get("/fhir/Spaceship/_history")).status_code == 404
    assert (await api.get("/fhir/Patient/nobody/_history")).status_code == 404
