"""Paging while the matches change: every match that still exists is seen exactly once, whatever the sort.

A status change moves a resource under sorts on mutable values (``_lastUpdated``, ``status``, ``received``),
which is what a fax does several times while it is delivered. These tests change resources between pages and
then check the walk: no duplicate, and every resource that matched at the first page (and was not deleted) seen.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest

from fhir_fax.fhir.store import MIGRATIONS

from helpers import FHIR_JSON, MEDIA, SEED_SENDER

STATUSES = ["preparation", "in-progress", "on-hold", "completed", "stopped", "not-done"]
SORTS = [None, "status", "-status", "_lastUpdated", "-_lastUpdated", "sent", "-sent", "received", "-received", "_id"]


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((item["url"] for item in bundle["link"] if item["relation"] == relation), None)


def communication(n: int, patient: str = "Patient/pat-x") -> dict[str, Any]:
    return {
        "resourceType": "Communication",
        "status": STATUSES[n % len(STATUSES)],
        "subject": {"reference": patient},
        "sent": f"2026-03-{1 + n % 28:02d}T10:00:00Z",
        "received": f"2026-04-{1 + n % 28:02d}T10:00:00Z",
    }


async def create(api: httpx.AsyncClient, n: int, patient: str = "Patient/pat-x") -> dict[str, Any]:
    response = await api.post("/fhir/Communication", json=communication(n, patient), headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()


async def touch(api: httpx.AsyncClient, resource_id: str, step: int) -> None:
    """Move a resource under every mutable sort: new status, sent and received times, new lastUpdated."""
    current = (await api.get(f"/fhir/Communication/{resource_id}")).json()
    current["status"] = STATUSES[(STATUSES.index(current["status"]) + 3 + step) % len(STATUSES)]
    current["received"] = f"2026-0{5 + step % 4}-{1 + (step * 7) % 28:02d}T10:00:00Z"
    current["sent"] = f"2026-0{1 + step % 3}-{1 + (step * 5) % 28:02d}T10:00:00Z"
    response = await api.put(f"/fhir/Communication/{resource_id}", json=current, headers=FHIR_JSON)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("sort", SORTS)
async def test_every_match_is_paged_once_while_matches_change(api: httpx.AsyncClient, sort: str | None) -> None:
    originals = [(await create(api, n))["id"] for n in range(14)]
    await create(api, 99, patient="Patient/someone-else")
    params = {"patient": "pat-x", "_count": "4"} | ({"_sort": sort} if sort else {})
    response = await api.get("/fhir/Communication", params=params)
    seen: list[str] = []
    step = 0
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        seen += ids(page)
        # Everything not yet seen moves (to the front and back of every mutable order), one already
        # seen moves too, and a new fax for the patient arrives.
        for resource_id in [i for i in originals if i not in seen] + seen[:1]:
            step += 1
            await touch(api, resource_id, step)
        await create(api, 100 + step)
        following = link(page, "next")
        if following is None:
            break
        response = await api.get(following)
    assert len(seen) == len(set(seen)), f"duplicates under _sort={sort}: {len(seen) - len(set(seen))}"
    missing = set(originals) - set(seen)
    assert not missing, f"{len(missing)} of {len(originals)} lost under _sort={sort}"


@pytest.mark.parametrize("sort", [None, "status", "-_lastUpdated"])
async def test_previous_links_walk_back_over_the_same_pages(api: httpx.AsyncClient, sort: str | None) -> None:
    originals = [(await create(api, n))["id"] for n in range(10)]
    params = {"patient": "pat-x", "_count": "3"} | ({"_sort": sort} if sort else {})
    pages = [(await api.get("/fhir/Communication", params=params)).json()]
    while (following := link(pages[-1], "next")) is not None:
        for resource_id in originals:
            await touch(api, resource_id, len(pages))
        pages.append((await api.get(following)).json())
    assert sorted(i for page in pages for i in ids(page)) == sorted(originals)
    back = (await api.get(link(pages[-1], "previous"))).json()
    assert ids(back) == ids(pages[-2])
    assert link(pages[0], "previous") is None


async def test_a_deleted_match_is_left_out_of_later_pages(api: httpx.AsyncClient) -> None:
    originals = [(await create(api, n))["id"] for n in range(8)]
    first = (await api.get("/fhir/Communication", params={"patient": "pat-x", "_count": "4", "_sort": "status"})).json()
    unseen = [i for i in originals if i not in ids(first)]
    assert (await api.delete(f"/fhir/Communication/{unseen[0]}")).status_code == 204
    second = (await api.get(link(first, "next"))).json()
    assert sorted(ids(first) + ids(second)) == sorted(set(originals) - {unseen[0]})


async def test_a_snapshot_page_shows_only_what_the_search_may_still_show(api: httpx.AsyncClient) -> None:
    """Membership is as at the first page, but the access and compartment filter applies to every page.

    A fax moved out of the patient's compartment after the first page (or one the caller may no longer see)
    is not shown on a later page of a compartment (or access-filtered) search.
    """
    patient = {"resourceType": "Patient", "id": "pat-x", "name": [{"family": "X"}]}
    assert (await api.put("/fhir/Patient/pat-x", json=patient, headers=FHIR_JSON)).status_code in (200, 201)
    originals = [(await create(api, n))["id"] for n in range(8)]
    params = {"_count": "4", "_sort": "status"}
    first = (await api.get("/fhir/Patient/pat-x/Communication", params=params)).json()
    moved = next(i for i in originals if i not in ids(first))
    current = (await api.get(f"/fhir/Communication/{moved}")).json()
    current["subject"] = {"reference": "Patient/pat-y"}
    assert (await api.put(f"/fhir/Communication/{moved}", json=current, headers=FHIR_JSON)).status_code == 200
    second = (await api.get(link(first, "next"))).json()
    assert moved not in ids(second)
    assert sorted(ids(first) + ids(second)) == sorted(set(originals) - {moved})


async def test_the_default_order_is_newest_created_first_and_status_changes_do_not_move_it(
    api: httpx.AsyncClient,
) -> None:
    made = [(await create(api, n))["id"] for n in range(5)]
    await touch(api, made[0], 1)
    bundle = (await api.get("/fhir/Communication", params={"patient": "pat-x"})).json()
    assert ids(bundle) == made[::-1]


# -- cursors are bound to their search ----------------------------------------------------------------


async def test_a_cursor_from_another_search_is_refused(api: httpx.AsyncClient, database: Any) -> None:
    for n in range(4):
        await create(api, n)
    for _ in range(3):
        await api.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    for params in ({"_count": "2"}, {"_count": "2", "_sort": "status"}):
        page = (await api.get("/fhir/Communication", params=params)).json()
        cursor = httpx.URL(link(page, "next")).params["_cursor"]
        for path, query in (
            ("/fhir/Patient", {"_count": "2", "_cursor": cursor}),
            ("/fhir/Communication", {"_count": "2", "status": "completed", "_cursor": cursor}),
        ):
            before = await database["Communication"].count_documents({})
            response = await api.get(path, params=query)
            assert response.status_code == 400, response.text
            issue = response.json()["issue"][0]
            assert "_cursor belongs to another search" in issue["diagnostics"]
            assert issue["expression"] == ["_cursor"]
            assert await database["Communication"].count_documents({}) == before


async def test_a_forged_cursor_is_refused(api: httpx.AsyncClient) -> None:
    forged = base64.urlsafe_b64encode(json.dumps({"after": "x", "dir": "next"}).encode()).decode().rstrip("=")
    response = await api.get("/fhir/Communication", params={"_cursor": forged})
    assert response.status_code == 400
    assert "_cursor" in response.json()["issue"][0]["diagnostics"]


async def test_repeated_sort_is_400(api: httpx.AsyncClient) -> None:
    response = await api.get("/fhir/Communication", params=[("_sort", "status"), ("_sort", "-sent")])
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert "_sort is given 2 times" in issue["diagnostics"] and issue["expression"] == ["_sort"]


# -- while the simulator delivers --------------------------------------------------------------------

FAST = {"simulator_speed": 200.0, "worker_poll_seconds": 0.02, "retry_delay_seconds": 0.05, "retry_backoff": 1.0}


@pytest.fixture
async def delivering(fax_settings: Any, database: Any) -> Any:
    from helpers import serving_fax

    async with serving_fax(fax_settings.model_copy(update=FAST), database) as http:
        yield http


async def test_paging_a_patients_faxes_while_they_are_delivered(delivering: httpx.AsyncClient) -> None:
    sent = []
    for n in range(30):
        body = {
            "media": MEDIA,
            "quality": "standard",
            "recipientNumber": f"+1617555{1000 + n:04d}",
            "sender": SEED_SENDER,
            "patient": "Patient/maria-lopez",
        }
        response = await delivering.post("/fax/v1/send", json=body)
        assert response.status_code == 200, response.text
        sent.append(response.json()["communicationResource"]["id"])
    walks = 0
    while True:
        seen: list[str] = []
        url: str | None = "/fhir/Communication?patient=maria-lopez&_count=4"
        while url:
            page = (await delivering.get(url)).json()
            seen += [i for i in ids(page) if i in sent]
            await asyncio.sleep(0.01)  # let deliveries move faxes between pages
            url = link(page, "next")
        walks += 1
        assert sorted(seen) == sorted(sent), f"walk {walks}: {len(set(sent) - set(seen))} lost, dup {len(seen)}"
        statuses = {
            e["resource"]["status"]
            for e in (await delivering.get("/fhir/Communication?patient=maria-lopez&_count=100")).json()["entry"]
        }
        if statuses <= {"completed", "stopped"} or walks >= 40:
            break


async def test_resources_stored_before_creation_keys_get_them_at_start_up(settings: Any, database: Any) -> None:
    from helpers import serving

    async with serving(settings, database) as api:
        made = [(await create(api, n))["id"] for n in range(5)]
        await touch(api, made[0], 1)
        assert (await api.delete(f"/fhir/Communication/{made[1]}")).status_code == 204
    # As an earlier release stored them: no creation key, deletion markers without a sort key, no record of
    # the migration.
    await database["Communication"].update_many({}, {"$unset": {"_fhirfax.created": ""}})
    await database["Communication"].update_many({"_fhirfax.deleted": True}, {"$unset": {"_fhirfax.sort": ""}})
    await database[MIGRATIONS].delete_many({})
    async with serving(settings, database) as api:
        bundle = (await api.get("/fhir/Communication", params={"_count": "2"})).json()
        walked = ids(bundle)
        while (following := link(bundle, "next")) is not None:
            bundle = (await api.get(following)).json()
            walked += ids(bundle)
        assert walked == [i for i in made[::-1] if i != made[1]]
        history = (await api.get("/fhir/Communication/_history")).json()
        assert history["entry"][0]["request"]["method"] == "DELETE"
        assert len(history["entry"]) == 7


async def test_the_per_patient_index_of_earlier_releases_is_dropped(settings: Any, database: Any) -> None:
    from helpers import serving

    await database["Communication"].create_index(
        [("_fhirfax.keys.patient.r", 1), ("_fhirfax.sort._lastUpdated", -1)], name="patient_lastUpdated"
    )
    async with serving(settings, database):
        names = {index["name"] async for index in await database["Communication"].list_indexes()}
    assert "patient_lastUpdated" not in names and "patient_created" in names


async def test_snapshot_pages_keep_includes_and_totals(api: httpx.AsyncClient) -> None:
    await api.put("/fhir/Patient/pat-x", json={"resourceType": "Patient", "id": "pat-x"}, headers=FHIR_JSON)
    made = [(await create(api, n))["id"] for n in range(5)]
    params = {"_sort": "status", "_count": "2", "_total": "accurate", "_include": "Communication:subject"}
    bundle = (await api.get("/fhir/Communication", params=params)).json()
    walked = []
    while True:
        assert bundle["total"] == 5
        assert [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include"] == ["pat-x"]
        walked += ids(bundle)
        following = link(bundle, "next")
        if following is None:
            break
        bundle = (await api.get(following)).json()
    assert sorted(walked) == sorted(made)


async def test_too_many_matches_for_a_snapshot_is_400_and_an_expired_one_410(settings: Any, database: Any) -> None:
    from helpers import serving

    async with serving(settings.model_copy(update={"search_snapshot_max": 3}), database) as api:
        for n in range(4):
            await create(api, n)
        refused = await api.get("/fhir/Communication", params={"_sort": "status", "_count": "2"})
        assert refused.status_code == 400
        issue = refused.json()["issue"][0]
        assert "More than 3 resources match" in issue["diagnostics"] and issue["expression"] == ["_sort"]
        assert await database["search_snapshots"].count_documents({}) == 0
        assert len(ids((await api.get("/fhir/Communication", params={"_count": "5"})).json())) == 4  # keyset: no cap
        first = (await api.get("/fhir/Communication", params={"_sort": "status", "status": "completed,stopped"})).json()
        assert link(first, "next") is None  # fits one page: no snapshot kept
        paged = (
            await api.get(
                "/fhir/Communication", params={"_sort": "status", "_count": "1", "status": "preparation,in-progress"}
            )
        ).json()
        await database["search_snapshots"].delete_many({})  # as the TTL index does once it has expired
        gone = await api.get(link(paged, "next"))
        assert gone.status_code == 410
        assert "run the search again from its first page" in gone.json()["issue"][0]["diagnostics"]
