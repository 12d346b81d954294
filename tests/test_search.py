"""Search with _id, _lastUpdated, _count, _sort, _total and keyset paging; results checked independently."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from fhir_fax.fhir.dates import parse_date_value, point_filter
from fhir_fax.fhir.errors import InvalidRequest
from fhir_fax.fhir.models import model_class

FHIR = {"content-type": "application/fhir+json"}


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def make_patients(api: httpx.AsyncClient, n: int) -> list[dict[str, Any]]:
    made = []
    for i in range(n):
        response = await api.post(
            "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"P{i}"}]}, headers=FHIR
        )
        made.append(response.json())
        await asyncio.sleep(0.002)  # distinct lastUpdated values
    return made


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((item["url"] for item in bundle["link"] if item["relation"] == relation), None)


# -- date values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "start", "end"),
    [
        ("2026", "2026-01-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
        ("2026-12", "2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
        ("2026-02-28", "2026-02-28T00:00:00+00:00", "2026-03-01T00:00:00+00:00"),
        ("2026-02-28T10:15", "2026-02-28T10:15:00+00:00", "2026-02-28T10:16:00+00:00"),
        ("2026-02-28T10:15:07+02:00", "2026-02-28T08:15:07+00:00", "2026-02-28T08:15:08+00:00"),
        ("2026-02-28T10:15:07.5Z", "2026-02-28T10:15:07.500000+00:00", "2026-02-28T10:15:07.501000+00:00"),
    ],
)
def test_partial_dates_cover_their_whole_precision(raw: str, start: str, end: str) -> None:
    value = parse_date_value("_lastUpdated", raw)
    assert (value.prefix, value.start.isoformat(), value.end.isoformat()) == ("eq", start, end)


@pytest.mark.parametrize("raw", ["yesterday", "2026-13", "2026-02-30", "26-01-01", "gt", "2026-01-01T25:00Z"])
def test_values_that_are_not_dates_are_refused(raw: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_date_value("_lastUpdated", raw)
    assert "_lastUpdated" in error.value.diagnostics and raw in error.value.diagnostics


async def test_every_prefix_matches_an_independent_evaluation(database: Any) -> None:
    """Each prefix, as a MongoDB filter, selects exactly what a plain-Python reading of FHIR selects."""
    base = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    moments = [base + timedelta(hours=h, milliseconds=ms) for h in range(-72, 73, 7) for ms in (0, 1, 999)]
    await database.points.insert_many([{"_id": i, "t": m} for i, m in enumerate(moments)])
    now = datetime(2026, 3, 12, tzinfo=UTC)
    expected_for = {
        "eq": lambda t, s, e: s <= t < e,
        "ne": lambda t, s, e: not s <= t < e,
        "gt": lambda t, s, e: t >= e,
        "sa": lambda t, s, e: t >= e,
        "lt": lambda t, s, e: t < s,
        "eb": lambda t, s, e: t < s,
        "ge": lambda t, s, e: t >= s,
        "le": lambda t, s, e: t < e,
    }
    for text in (
        "2026",
        "2026-03",
        "2026-03-10",
        "2026-03-10T12:00",
        "2026-03-10T19:00:00",
        "2026-03-13T10:00Z",
    ):
        for prefix, rule in expected_for.items():
            value = parse_date_value("t", prefix + text)
            found = {d["_id"] async for d in database.points.find(point_filter("t", value, now))}
            expected = {i for i, m in enumerate(moments) if rule(m, value.start, value.end)}
            assert found == expected, (prefix, text)
    approx = parse_date_value("t", "ap2026-03-10")
    found = {d["_id"] async for d in database.points.find(point_filter("t", approx, now))}
    margin = max(abs(now - approx.start) / 10, timedelta(days=1))
    assert found == {i for i, m in enumerate(moments) if approx.start - margin <= m < approx.end + margin}


# -- search over HTTP ---------------------------------------------------------------------------------


async def test_search_by_id_with_or_and_not(api: httpx.AsyncClient) -> None:
    people = await make_patients(api, 4)
    a, b = people[0]["id"], people[1]["id"]
    bundle = (await api.get("/fhir/Patient", params={"_id": f"{a},{b}"})).json()
    assert sorted(ids(bundle)) == sorted([a, b])
    model_class("Bundle").model_validate(bundle)
    excluded = (await api.get("/fhir/Patient", params={"_id:not": a})).json()
    assert sorted(ids(excluded)) == sorted(p["id"] for p in people[1:])


async def test_search_by_last_updated_matches_the_stored_times(api: httpx.AsyncClient) -> None:
    people = await make_patients(api, 6)
    pivot = people[3]["meta"]["lastUpdated"]
    times = {p["id"]: instant(p["meta"]["lastUpdated"]) for p in people}
    pivot_time = instant(pivot)
    for prefix, rule in (
        ("ge", lambda t: t >= pivot_time),
        ("gt", lambda t: t > pivot_time),
        ("lt", lambda t: t < pivot_time),
        ("le", lambda t: t <= pivot_time),
        ("eq", lambda t: t == pivot_time),
    ):
        bundle = (await api.get("/fhir/Patient", params={"_lastUpdated": prefix + pivot})).json()
        assert sorted(ids(bundle)) == sorted(i for i, t in times.items() if rule(t)), prefix
    year = (await api.get("/fhir/Patient", params={"_lastUpdated": pivot[:4]})).json()
    assert len(ids(year)) == 6
    both = await api.get("/fhir/Patient", params=[("_lastUpdated", "gt2000"), ("_lastUpdated", "lt2000")])
    assert ids(both.json()) == []  # repeated parameters AND


async def test_default_order_is_newest_first_and_sort_can_change_it(api: httpx.AsyncClient) -> None:
    people = await make_patients(api, 5)
    newest_first = [p["id"] for p in reversed(people)]
    assert ids((await api.get("/fhir/Patient")).json()) == newest_first
    assert ids((await api.get("/fhir/Patient", params={"_sort": "_lastUpdated"})).json()) == newest_first[::-1]
    assert ids((await api.get("/fhir/Patient", params={"_sort": "_id"})).json()) == sorted(newest_first)
    bad = await api.get("/fhir/Patient", params={"_sort": "shoe"})
    assert bad.status_code == 400 and "_sort cannot use 'shoe'" in bad.json()["issue"][0]["diagnostics"]


async def test_paging_forward_and_back_has_no_gaps_or_duplicates_while_writing(
    api: httpx.AsyncClient,
) -> None:
    people = await make_patients(api, 23)
    expected = [p["id"] for p in reversed(people)]
    seen: list[str] = []
    page = (await api.get("/fhir/Patient", params={"_count": "5"})).json()
    pages = [page]
    while True:
        seen.extend(ids(page))
        await make_patients(api, 1)  # new writes land before page one: never inside the walk
        nxt = link(page, "next")
        if nxt is None:
            break
        page = (await api.get(nxt)).json()
        pages.append(page)
    assert seen == expected
    assert len(pages) == 5
    previous = link(pages[-1], "previous")
    assert previous is not None
    back = (await api.get(previous)).json()
    assert ids(back) == ids(pages[-2])
    assert link(pages[0], "previous") is None
    assert link(pages[2], "self").startswith("http://fhir.test/fhir/Patient?_count=5&_cursor=")


async def test_total_and_summary_count(api: httpx.AsyncClient) -> None:
    await make_patients(api, 3)
    assert "total" not in (await api.get("/fhir/Patient")).json()
    assert (await api.get("/fhir/Patient", params={"_total": "accurate", "_count": "1"})).json()["total"] == 3
    summary = (await api.get("/fhir/Patient", params={"_summary": "count"})).json()
    assert summary["total"] == 3 and "entry" not in summary
    zero = (await api.get("/fhir/Patient", params={"_count": "0"})).json()
    assert zero["total"] == 3 and "entry" not in zero


async def test_count_is_capped_at_the_maximum(api: httpx.AsyncClient) -> None:
    await make_patients(api, 3)
    bundle = (await api.get("/fhir/Patient", params={"_count": "100000"})).json()
    assert len(ids(bundle)) == 3


async def test_post_search_with_a_form_body(api: httpx.AsyncClient) -> None:
    people = await make_patients(api, 3)
    response = await api.post(
        "/fhir/Patient/_search",
        content=f"_id={people[0]['id']}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200 and ids(response.json()) == [people[0]["id"]]
    json_body = await api.post("/fhir/Patient/_search", json={"_id": "x"})
    assert json_body.status_code == 400
    assert "application/x-www-form-urlencoded" in json_body.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"shoe": "9"}, "Unknown search parameter 'shoe'"),
        ({"_lastUpdated": "last-tuesday"}, "not a FHIR date"),
        ({"_lastUpdated:missing": "true"}, "does not support the modifier ':missing'"),
        ({"_count": "-1"}, "_count must be a whole number"),
        ({"_count": "ten"}, "_count must be a whole number"),
        ({"_total": "lots"}, "_total must be one of"),
        ({"_id": ""}, "empty value"),
        ({"_id": '{"$ne": null}'}, "not a FHIR id"),
        ({"_id[$ne]": "x"}, "Unknown search parameter '_id[$ne]'"),
        ({"_id": "a" * 65}, "not a FHIR id"),
        ({"_cursor": "bm90IGEgY3Vyc29y"}, "_cursor is not a cursor this server issued"),
        ({"_cursor": "eyJrIjpbeyJ2Ijp7IiRndCI6MX19XSwiZGlyIjoibmV4dCJ9"}, "_cursor is not a cursor"),
    ],
)
async def test_bad_search_input_is_400_naming_the_parameter(
    api: httpx.AsyncClient, params: dict[str, str], message: str
) -> None:
    await make_patients(api, 1)
    response = await api.get("/fhir/Patient", params=params)
    assert response.status_code == 400, response.text
    assert message in response.json()["issue"][0]["diagnostics"]


async def test_lenient_handling_ignores_unknown_parameters_and_says_so(api: httpx.AsyncClient) -> None:
    people = await make_patients(api, 2)
    response = await api.get(
        "/fhir/Patient", params={"shoe": "9", "_id": people[0]["id"]}, headers={"prefer": "handling=lenient"}
    )
    assert response.status_code == 200
    bundle = response.json()
    assert ids(bundle) == [people[0]["id"]]
    outcome = next(e for e in bundle["entry"] if e["search"]["mode"] == "outcome")["resource"]
    assert outcome["issue"][0]["expression"] == ["shoe"]


async def test_deleted_resources_are_not_found_by_search(api: httpx.AsyncClient) -> None:
    people = await make_patients(api, 2)
    await api.delete(f"/fhir/Patient/{people[0]['id']}")
    assert ids((await api.get("/fhir/Patient")).json()) == [people[1]["id"]]
