"""Communication search: every parameter, prefix and modifier checked against an independent evaluation."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from search_oracle import covered, date_matches, reference_matches, token_matches

from fhir_fax.fhir.search import parse_search
from fhir_fax.fhir.search_params import RECIPIENT_TARGETS, SENDER_TARGETS, default_registry

from helpers import FHIR_JSON

PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
SENT_VALUES = [
    "2025-12-31T23:59:59.999Z", "2026-01-01T00:00:00Z", "2026-01-15T10:30:00+02:00", "2026-02",
    "2026-02-28", "2026-03-01T00:00:00.000Z", "2026-06-15T12:00:00Z", "2026", "2027-01-01T00:00:00Z", None,
]  # fmt: skip


def make_communication(rng: random.Random, n: int) -> dict[str, Any]:
    """One Communication drawn from a small vocabulary, so that searches match some and miss others."""
    subject = rng.choice(["Patient/pat-a", "Patient/pat-b", "Group/grp-1", "Patient/12223334444", None])
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "status": rng.choice(["in-progress", "completed", "stopped", "completed"]),
        "identifier": [{"system": rng.choice(["urn:sys:a", "urn:sys:b"]), "value": f"v{n % 5}"}],
    }
    if n % 7 == 0:
        resource["identifier"].append({"value": "loose"})
    if subject:
        resource["subject"] = {"reference": subject}
    recipients = rng.sample(
        ["Practitioner/prac-1", "Organization/org-1", "Patient/pat-a", "Practitioner/12223334444", "#12223334444"],
        k=rng.choice([1, 1, 2]),
    )
    if "#12223334444" in recipients:
        resource["contained"] = [
            {
                "resourceType": "Practitioner",
                "id": "12223334444",
                "telecom": [{"system": "fax", "value": "+12223334444"}],
            }
        ]
    resource["recipient"] = [{"reference": r} for r in recipients]
    if rng.random() < 0.8:
        resource["sender"] = {
            "reference": rng.choice(["HealthcareService/hs-1", "Organization/org-1", "Patient/pat-b"])
        }
    if rng.random() < 0.8:
        system = rng.choice([PARTICIPATION, "urn:other"])
        resource["medium"] = [{"coding": [{"system": system, "code": rng.choice(["FAXWRIT", "EMAILWRIT"])}]}]
    if rng.random() < 0.5:
        resource["category"] = [{"coding": [{"system": "urn:cat", "code": rng.choice(["referral", "results"])}]}]
    sent = rng.choice(SENT_VALUES)
    if sent:
        resource["sent"] = sent
    if rng.random() < 0.4:
        resource["received"] = rng.choice(SENT_VALUES[:-1])
    if rng.random() < 0.3:
        resource["encounter"] = {"reference": rng.choice(["Encounter/enc-1", "Encounter/enc-2"])}
    if rng.random() < 0.3:
        resource["partOf"] = [{"reference": "Procedure/proc-1"}]
    if rng.random() < 0.3:
        resource["basedOn"] = [{"reference": rng.choice(["ServiceRequest/sr-1", "CarePlan/cp-1"])}]
    return resource


@pytest.fixture
async def corpus(api: httpx.AsyncClient) -> AsyncIterator[list[dict[str, Any]]]:
    """About 60 stored Communications plus the Patients they point at."""
    for patient_id in ("pat-a", "pat-b", "12223334444"):
        await api.put(
            f"/fhir/Patient/{patient_id}", json={"resourceType": "Patient", "id": patient_id}, headers=FHIR_JSON
        )
    rng = random.Random(20261124)
    stored = []
    for n in range(60):
        response = await api.post("/fhir/Communication", json=make_communication(rng, n), headers=FHIR_JSON)
        assert response.status_code == 201, response.text
        stored.append(response.json())
    yield stored


async def search_ids(
    api: httpx.AsyncClient, params: list[tuple[str, str]], path: str = "/fhir/Communication"
) -> list[str]:
    response = await api.get(path, params=[*params, ("_count", "500")])
    assert response.status_code == 200, response.text
    return [e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def expected(corpus: list[dict[str, Any]], keep: Any) -> set[str]:
    return {r["id"] for r in corpus if keep(r)}


NOW = datetime.now(UTC)

REFERENCE_CASES = [
    ("subject", "Patient/pat-a", ("Group", "Patient")),
    ("subject", "pat-a", ("Group", "Patient")),
    ("subject", "grp-1", ("Group", "Patient")),
    ("subject", "http://fhir.test/fhir/Patient/pat-b", ("Group", "Patient")),
    ("recipient", "Practitioner/prac-1", RECIPIENT_TARGETS),
    ("recipient", "prac-1", RECIPIENT_TARGETS),
    ("recipient", "12223334444", RECIPIENT_TARGETS),
    ("recipient", "Practitioner/12223334444", RECIPIENT_TARGETS),
    ("sender", "Organization/org-1", SENDER_TARGETS),
    ("sender", "pat-b", SENDER_TARGETS),
    ("encounter", "Encounter/enc-1", ("Encounter",)),
    ("encounter", "enc-2", ("Encounter",)),
    ("part-of", "Procedure/proc-1", ("Procedure",)),
    ("based-on", "CarePlan/cp-1", ("CarePlan",)),
]
ELEMENT = {"part-of": "partOf", "based-on": "basedOn"}


@pytest.mark.parametrize(("parameter", "value", "targets"), REFERENCE_CASES)
async def test_reference_parameters(
    api: httpx.AsyncClient, corpus: list[dict[str, Any]], parameter: str, value: str, targets: tuple[str, ...]
) -> None:
    element = ELEMENT.get(parameter, parameter)
    want = expected(corpus, lambda r: reference_matches(r, element, value, targets))
    assert set(await search_ids(api, [(parameter, value)])) == want
    assert want, "the case should match something"


async def test_contained_recipients_are_not_real_practitioners(
    api: httpx.AsyncClient, corpus: list[dict[str, Any]]
) -> None:
    contained_only = {r["id"] for r in corpus if [x["reference"] for x in r["recipient"]] == ["#12223334444"]}
    assert contained_only, "the corpus has faxes sent to a bare number"
    found = set(await search_ids(api, [("recipient", "Practitioner/12223334444")]))
    found |= set(await search_ids(api, [("recipient", "12223334444")]))
    assert not found & contained_only


async def test_patient_is_the_subject_when_it_is_a_patient(
    api: httpx.AsyncClient, corpus: list[dict[str, Any]]
) -> None:
    for value in ("pat-a", "Patient/pat-b", "12223334444"):
        want = expected(corpus, lambda r, v=value: reference_matches(r, "subject", v, ("Patient",)))
        assert set(await search_ids(api, [("patient", value)])) == want
    assert set(await search_ids(api, [("subject:Patient", "pat-a")])) == set(
        await search_ids(api, [("patient", "pat-a")])
    )


async def test_reference_or_and_missing(api: httpx.AsyncClient, corpus: list[dict[str, Any]]) -> None:
    want = expected(
        corpus,
        lambda r: (
            reference_matches(r, "recipient", "Practitioner/prac-1", RECIPIENT_TARGETS)
            or reference_matches(r, "recipient", "Organization/org-1", RECIPIENT_TARGETS)
        ),
    )
    assert set(await search_ids(api, [("recipient", "Practitioner/prac-1,Organization/org-1")])) == want
    for parameter, element in (("subject", "subject"), ("sender", "sender"), ("encounter", "encounter")):
        assert set(await search_ids(api, [(f"{parameter}:missing", "true")])) == expected(
            corpus, lambda r, e=element: e not in r
        )
        assert set(await search_ids(api, [(f"{parameter}:missing", "false")])) == expected(
            corpus, lambda r, e=element: e in r
        )


TOKEN_CASES = [
    ("status", "completed"),
    ("status", "in-progress,stopped"),
    ("status", "http://hl7.org/fhir/event-status|completed"),
    ("status", "|completed"),
    ("identifier", "urn:sys:a|v1"),
    ("identifier", "v2"),
    ("identifier", "urn:sys:b|"),
    ("identifier", "|loose"),
    ("medium", "FAXWRIT"),
    ("medium", f"{PARTICIPATION}|FAXWRIT"),
    ("medium", "urn:other|"),
    ("category", "referral"),
    ("category", "urn:cat|results"),
]


@pytest.mark.parametrize(("parameter", "value"), TOKEN_CASES)
async def test_token_parameters_and_not(
    api: httpx.AsyncClient, corpus: list[dict[str, Any]], parameter: str, value: str
) -> None:
    def matches(r: dict[str, Any]) -> bool:
        return any(token_matches(r, parameter, v) for v in value.split(","))

    assert set(await search_ids(api, [(parameter, value)])) == expected(corpus, matches)
    assert set(await search_ids(api, [(f"{parameter}:not", value)])) == expected(corpus, lambda r: not matches(r))


async def test_token_missing(api: httpx.AsyncClient, corpus: list[dict[str, Any]]) -> None:
    for parameter in ("medium", "category"):
        assert set(await search_ids(api, [(f"{parameter}:missing", "true")])) == expected(
            corpus, lambda r, p=parameter: p not in r
        )
    assert await search_ids(api, [("status:missing", "true")]) == []


DATE_VALUES = ["2026", "2026-01", "2026-02-28", "2026-01-15T08:30", "2026-01-01T00:00:00Z", "2026-06-15T14:00:00+02:00"]


@pytest.mark.parametrize("parameter", ["sent", "received"])
@pytest.mark.parametrize("prefix", ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"])
async def test_date_prefixes_at_every_precision(
    api: httpx.AsyncClient, corpus: list[dict[str, Any]], parameter: str, prefix: str
) -> None:
    for value in DATE_VALUES:
        want = expected(corpus, lambda r, v=value: date_matches(r.get(parameter), prefix + v, NOW))
        assert set(await search_ids(api, [(parameter, prefix + value)])) == want, (parameter, prefix, value)


async def test_repeated_parameters_are_and_and_commas_are_or(
    api: httpx.AsyncClient, corpus: list[dict[str, Any]]
) -> None:
    both = [("sent", "ge2026-01"), ("sent", "lt2026-06")]
    want = expected(
        corpus,
        lambda r: date_matches(r.get("sent"), "ge2026-01", NOW) and date_matches(r.get("sent"), "lt2026-06", NOW),
    )
    assert set(await search_ids(api, both)) == want
    either = expected(
        corpus, lambda r: date_matches(r.get("sent"), "2026-02", NOW) or date_matches(r.get("sent"), "2027", NOW)
    )
    assert set(await search_ids(api, [("sent", "2026-02,2027")])) == either
    combined = expected(
        corpus,
        lambda r: reference_matches(r, "subject", "Patient/pat-a", ("Patient",)) and r["status"] == "completed",
    )
    assert set(await search_ids(api, [("patient", "pat-a"), ("status", "completed")])) == combined


async def test_sent_and_received_missing(api: httpx.AsyncClient, corpus: list[dict[str, Any]]) -> None:
    assert set(await search_ids(api, [("sent:missing", "true")])) == expected(corpus, lambda r: "sent" not in r)
    assert set(await search_ids(api, [("received:missing", "false")])) == expected(corpus, lambda r: "received" in r)


@pytest.mark.parametrize("sort", ["sent", "-sent", "status", "-status", "received", "_lastUpdated", "-_lastUpdated"])
async def test_sort_orders(api: httpx.AsyncClient, corpus: list[dict[str, Any]], sort: str) -> None:
    descending = sort.startswith("-")
    name = sort.lstrip("-")
    far = datetime(9999, 12, 31, tzinfo=UTC)

    def key(r: dict[str, Any]) -> Any:
        if name in ("sent", "received"):
            return (covered(r[name])[0] if name in r else far, r["id"])
        if name == "status":
            return (r["status"], r["id"])
        return (r["meta"]["lastUpdated"], r["id"])

    want = [r["id"] for r in sorted(corpus, key=key, reverse=descending)]
    assert await search_ids(api, [("_sort", sort)]) == want


async def test_paging_by_sent_while_writing_sees_every_original_once(
    api: httpx.AsyncClient, corpus: list[dict[str, Any]]
) -> None:
    rng = random.Random(5)
    seen: list[str] = []
    url: str | None = "/fhir/Communication?_sort=sent&_count=7"
    while url:
        page = (await api.get(url)).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        for n in range(2):  # new faxes land before and after the cursor
            await api.post("/fhir/Communication", json=make_communication(rng, n), headers=FHIR_JSON)
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == len(set(seen)), "no duplicates"
    assert {r["id"] for r in corpus} <= set(seen), "no gaps"


async def test_patient_compartment(api: httpx.AsyncClient, corpus: list[dict[str, Any]]) -> None:
    def member(r: dict[str, Any]) -> bool:
        return any(reference_matches(r, e, "Patient/pat-a", ("Patient",)) for e in ("subject", "sender", "recipient"))

    assert set(await search_ids(api, [], path="/fhir/Patient/pat-a/Communication")) == expected(corpus, member)
    narrowed = await search_ids(api, [("status", "completed")], path="/fhir/Patient/pat-a/Communication")
    assert set(narrowed) == expected(corpus, lambda r: member(r) and r["status"] == "completed")
    page = (await api.get("/fhir/Patient/pat-a/Communication", params={"_count": "2"})).json()
    next_link = next(link["url"] for link in page["link"] if link["relation"] == "next")
    assert next_link.startswith("http://fhir.test/fhir/Patient/pat-a/Communication?")
    unknown = await api.get("/fhir/Patient/nobody/Communication")
    assert unknown.status_code == 404
    other = await api.get("/fhir/Practitioner/prac-1/Communication")
    assert other.status_code == 404 and "Patient/{id}/Communication" in other.json()["issue"][0]["diagnostics"]


async def test_elements_keeps_only_what_was_asked(api: httpx.AsyncClient, corpus: list[dict[str, Any]]) -> None:
    bundle = (await api.get("/fhir/Communication", params={"_elements": "status,subject", "_count": "5"})).json()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert set(resource) <= {"resourceType", "id", "meta", "status", "subject"}
        assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in resource[
            "meta"
        ]["tag"]


async def test_include_and_revinclude(api: httpx.AsyncClient, corpus: list[dict[str, Any]]) -> None:
    bundle = (
        await api.get("/fhir/Communication", params={"patient": "pat-a", "_include": "Communication:subject"})
    ).json()
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert [(r["resourceType"], r["id"]) for r in included] == [("Patient", "pat-a")]
    targeted = (
        await api.get("/fhir/Communication", params={"_include": "Communication:recipient:Patient", "_count": "500"})
    ).json()
    assert {
        (e["resource"]["resourceType"], e["resource"]["id"])
        for e in targeted["entry"]
        if e["search"]["mode"] == "include"
    } == {("Patient", "pat-a")}
    rev = (await api.get("/fhir/Patient", params={"_id": "pat-b", "_revinclude": "Communication:subject"})).json()
    revs = {e["resource"]["id"] for e in rev["entry"] if e["search"]["mode"] == "include"}
    assert revs == expected(corpus, lambda r: reference_matches(r, "subject", "Patient/pat-b", ("Patient",)))


async def test_total_counts_the_filtered_set(api: httpx.AsyncClient, corpus: list[dict[str, Any]]) -> None:
    bundle = (
        await api.get("/fhir/Communication", params={"status": "completed", "_total": "accurate", "_count": "1"})
    ).json()
    assert bundle["total"] == len(expected(corpus, lambda r: r["status"] == "completed"))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status:exact": "completed"}, "does not support the modifier ':exact'"),
        ({"subject:Device": "d1"}, "does not support the modifier ':Device'"),
        ({"sent:not": "2026"}, "does not support the modifier ':not'"),
        ({"sent": "2026-13"}, "not a real date (month must be in 1..12)"),
        ({"sent": "soon"}, "not a FHIR date"),
        ({"status": "a|b|c"}, "too many '|'"),
        ({"identifier": "|"}, "names neither a system nor a code"),
        ({"subject:missing": "maybe"}, "takes true or false"),
        ({"subject:Patient": "Group/g"}, "names another type"),
        ({"_include": "Patient:general-practitioner"}, "must start with the searched type"),
        ({"_include": "Communication:status"}, "has no reference parameter 'status'"),
        ({"_revinclude": "Communication"}, "Type:parameter[:TargetType]"),
        ({"_sort": "subject"}, "_sort cannot use 'subject'"),
        ({"_sort": "sent,status"}, "_sort takes one parameter"),
        ({"subject.$ne": "x"}, "Unknown search parameter 'subject.$ne'"),
    ],
)
async def test_bad_values_and_modifiers_are_400(api: httpx.AsyncClient, params: dict[str, str], message: str) -> None:
    response = await api.get("/fhir/Communication", params=params)
    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert message in issue["diagnostics"]
    assert issue["expression"], "the parameter is named"


@pytest.mark.parametrize("value", ['{"$ne": null}', "^(a+)+$", ".*", "a" * 5000, "$where", "\\", "Patient/.*"])
async def test_hostile_values_are_taken_literally(
    api: httpx.AsyncClient, corpus: list[dict[str, Any]], value: str
) -> None:
    for parameter in ("subject", "status", "identifier"):
        response = await api.get("/fhir/Communication", params={parameter: value})
        assert response.status_code == 200
        assert response.json().get("entry", []) == []


async def test_escaped_separators_are_part_of_the_value(api: httpx.AsyncClient) -> None:
    odd = {
        "resourceType": "Communication",
        "status": "completed",
        "identifier": [{"system": "urn:x", "value": "a,b|c"}],
    }
    created = (await api.post("/fhir/Communication", json=odd, headers=FHIR_JSON)).json()
    assert await search_ids(api, [("identifier", "urn:x|a\\,b\\|c")]) == [created["id"]]


async def test_the_per_patient_query_uses_its_index(
    api: httpx.AsyncClient, corpus: list[dict[str, Any]], database: Any
) -> None:
    query = parse_search(
        "Communication", [("patient", "pat-a")], default_registry(), default_count=20, max_count=500,
        base_url="http://fhir.test/fhir",
    )  # fmt: skip
    cursor = database["Communication"].find(query.filter).sort(*query.sort).limit(21)
    plan = str(await cursor.explain())
    assert "IXSCAN" in plan and "'indexName': 'patient_created'" in plan
    assert "COLLSCAN" not in plan
