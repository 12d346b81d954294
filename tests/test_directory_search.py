"""Directory search (Patient, Practitioner, Organization ...): every parameter checked against an independent
evaluation over generated resources, through the HTTP API on the real database."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from search_oracle import covered, date_matches, folded, human_name_parts, string_matches, token_matches
from test_gate import as_client

from fhir_fax.fhir.search import KEY_RECORDS, SNAPSHOTS, parse_search
from fhir_fax.fhir.search_params import default_registry
from fhir_fax.fhir.store import RESERVED, ResourceStore

from helpers import FHIR_JSON, serving

NOW = datetime.now(UTC)
HOSTILE = ['{"$ne": null}', "^(a+)+$", ".*", "a" * 300, "$where", "\\", "M.*"]
FAMILIES = [
    "Müller", "Mueller", "Muller", "Møller", "Muñoz", "García", "van der Berg", "O'Brien", "Łukasiewicz",
    "Straße", "MÜLLER-Lüdenscheidt", "Smith", "Smithson",
]  # fmt: skip
GIVENS = ["Hans", "Jürgen", "José", "Zoë", "Anna", "Ann", "Ånne", "Éric", "Eric"]
BIRTH_DATES = ["1970", "1970-03", "1970-03-15", "1985-12-31", "2001-01-01", "2001-06-30", None]
PHONES = ["+15550100", "+15550101", "+15550199"]


def make_patient(rng: random.Random, n: int) -> dict[str, Any]:
    """One Patient from a small vocabulary (accents, spaces, punctuation), so searches match some and miss others."""
    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": f"m{n % 6}"}]}
    names = []
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        name: dict[str, Any] = {"family": rng.choice(FAMILIES), "given": rng.sample(GIVENS, k=rng.choice([1, 2]))}
        if rng.random() < 0.3:
            name["prefix"] = [rng.choice(["Dr.", "Mr"])]
        if rng.random() < 0.2:
            name["suffix"] = ["Jr."]
        if rng.random() < 0.3:
            name["text"] = f"{name['given'][0]} {name['family']}"
        names.append(name)
    if names:
        patient["name"] = names
    if born := rng.choice(BIRTH_DATES):
        patient["birthDate"] = born
    if gender := rng.choice(["male", "female", "other", "unknown", None]):
        patient["gender"] = gender
    telecom = [
        {"system": rng.choice(["phone", "fax"]), "value": phone} for phone in rng.sample(PHONES, k=rng.choice([0, 1]))
    ]
    if rng.random() < 0.3:
        telecom.append({"system": "email", "value": f"p{n % 3}@example.org"})
    if telecom:
        patient["telecom"] = telecom
    return patient


@pytest.fixture
async def patients(api: httpx.AsyncClient) -> AsyncIterator[list[dict[str, Any]]]:
    rng = random.Random(20261130)
    stored = []
    for n in range(45):
        response = await api.post("/fhir/Patient", json=make_patient(rng, n), headers=FHIR_JSON)
        assert response.status_code == 201, response.text
        stored.append(response.json())
    yield stored


async def search_ids(
    api: httpx.AsyncClient, params: list[tuple[str, str]], resource_type: str = "Patient"
) -> list[str]:
    response = await api.get(f"/fhir/{resource_type}", params=[*params, ("_count", "500")])
    assert response.status_code == 200, response.text
    return [e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def expected(corpus: list[dict[str, Any]], keep: Any) -> set[str]:
    return {r["id"] for r in corpus if keep(r)}


PART = {"name": None, "family": "family", "given": "given"}
STRING_CASES = [
    ("name", "", "muller"),  # Müller, Muller, MÜLLER-Lüdenscheidt; not Mueller
    ("name", "", "MUL"),
    ("name", "", "mü"),
    ("name", "", "moller"),  # ø has no decomposition: its plain form
    ("name", "", "lukas"),
    ("name", "", "strasse"),  # ß casefolds to ss
    ("name", "", "van der"),
    ("name", "", "o'b"),
    ("name", "", "dr"),
    ("name", "", "ann"),  # Anna, Ann, Ånne
    ("name", "", "hans muller"),  # the text
    ("name", "", "jr."),
    ("name", "", "xyz"),
    ("name", "", "muller,garcia"),  # OR
    ("family", "", "smith"),
    ("family", "", "müller-l"),
    ("family", "", "hans"),  # a given name, not a family
    ("given", "", "JOSE"),
    ("given", "", "zoe,eric"),
    ("name", "exact", "Müller"),
    ("name", "exact", "müller"),  # exact is case-sensitive
    ("name", "exact", "van der Berg,Zoë"),
    ("family", "exact", "Smith"),  # not Smithson
    ("name", "contains", "ller"),
    ("name", "contains", "SON"),
    ("name", "contains", "der b"),
    ("name", "contains", "ÜDEN,smiths"),  # OR
    ("given", "contains", "n"),
]


async def test_string_search_ignores_case_and_accents(api: httpx.AsyncClient, patients: list[dict[str, Any]]) -> None:
    for parameter, modifier, value in STRING_CASES:
        want = expected(
            patients,
            lambda r, p=parameter, m=modifier, v=value: any(
                string_matches(human_name_parts(r, PART[p]), one, m) for one in v.split(",")
            ),
        )
        name = f"{parameter}:{modifier}" if modifier else parameter
        assert set(await search_ids(api, [(name, value)])) == want, (name, value)
    assert await search_ids(api, [("name", "muller")]), "accents are ignored: Müller is found"
    assert not await search_ids(api, [("name", "xyz")])
    # Repeating a parameter is AND; :missing is the absence of any value.
    both = expected(
        patients,
        lambda r: string_matches(human_name_parts(r), "mul") and string_matches(human_name_parts(r), "hans"),
    )
    assert both, "the corpus has a Hans Müller"
    assert set(await search_ids(api, [("name", "mul"), ("name", "hans")])) == both
    with_date = expected(patients, lambda r: string_matches(human_name_parts(r, "family"), "m") and "birthDate" in r)
    assert set(await search_ids(api, [("family", "m"), ("birthdate:missing", "false")])) == with_date
    for parameter, present in (
        ("name", lambda r: bool(human_name_parts(r))),
        ("family", lambda r: bool(human_name_parts(r, "family"))),
        ("birthdate", lambda r: "birthDate" in r),
        ("gender", lambda r: "gender" in r),
        ("telecom", lambda r: "telecom" in r),
    ):
        assert set(await search_ids(api, [(f"{parameter}:missing", "true")])) == expected(
            patients, lambda r, p=present: not p(r)
        ), parameter
        assert set(await search_ids(api, [(f"{parameter}:missing", "false")])) == expected(patients, present)

    # Values are text, never operators or patterns.
    for value in HOSTILE:
        for parameter in ("name", "name:contains", "name:exact", "family", "telecom"):
            response = await api.get("/fhir/Patient", params={parameter: value})
            assert response.status_code == 200, response.text
            assert response.json().get("entry", []) == [], (parameter, value)
    # Values longer than the stored prefixes match on the rest of the name too.
    long_name = "Wolfeschlegelsteinhausenbergerdorff"
    created = await api.post(
        "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": long_name}]}, headers=FHIR_JSON
    )
    near = {"resourceType": "Patient", "name": [{"family": long_name[:30] + "x"}]}
    assert (await api.post("/fhir/Patient", json=near, headers=FHIR_JSON)).status_code == created.status_code == 201
    assert await search_ids(api, [("family", long_name.upper()[:33])]) == [created.json()["id"]]
    assert len(await search_ids(api, [("family", long_name[:30])])) == 2


def telecom_matches(resource: dict[str, Any], search: str) -> bool:
    wrapped = {"identifier": [{"system": t["system"], "value": t["value"]} for t in resource.get("telecom", [])]}
    return token_matches(wrapped, "identifier", search)


def sort_key(name: str) -> Any:
    """The order FHIR gives: the folded first value (dates: their start), ties by id, resources without last."""
    last = "\U0010ffff"

    def key(r: dict[str, Any]) -> Any:
        if name == "birthdate":
            return (covered(r["birthDate"])[0].isoformat() if "birthDate" in r else last, r["id"])
        parts = human_name_parts(r, PART[name])
        return (folded(parts[0]) if parts else last, r["id"])

    return key


async def test_tokens_dates_and_sort_orders(api: httpx.AsyncClient, patients: list[dict[str, Any]]) -> None:
    for value in ("+15550100", "fax|+15550101", "phone|", "email|p1@example.org", "+15550199,fax|+15550100"):
        want = expected(patients, lambda r, v=value: any(telecom_matches(r, one) for one in v.split(",")))
        assert set(await search_ids(api, [("telecom", value)])) == want, value
    for value in ("female", "http://hl7.org/fhir/administrative-gender|male", "other,unknown"):
        want = expected(patients, lambda r, v=value: r.get("gender") in [one.split("|")[-1] for one in v.split(",")])
        assert set(await search_ids(api, [("gender", value)])) == want, value
    assert set(await search_ids(api, [("identifier", "urn:mrn|m2")])) == expected(
        patients, lambda r: token_matches(r, "identifier", "urn:mrn|m2")
    )
    for value in ("1970", "1970-03", "eq1970-03-15", "ge1985", "lt1971", "ne1970-03-15", "sa2001-01-01", "ap2001"):
        want = expected(patients, lambda r, v=value: date_matches(r.get("birthDate"), v, NOW))
        assert set(await search_ids(api, [("birthdate", value)])) == want, value
    for sort in ("family", "-family", "name", "given", "birthdate", "-birthdate"):
        name = sort.lstrip("-")
        want_order = [r["id"] for r in sorted(patients, key=sort_key(name), reverse=sort.startswith("-"))]
        assert await search_ids(api, [("_sort", sort)]) == want_order, sort


async def test_the_other_directory_types_and_their_declaration(api: httpx.AsyncClient) -> None:
    async def create(resource: dict[str, Any]) -> str:
        response = await api.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    fax = {"system": "fax", "value": "+16175559999"}
    chen = await create(
        {"resourceType": "Practitioner", "active": True, "name": [{"family": "Chén", "given": ["Amélie"]}],
         "telecom": [fax], "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567890"}]}
    )  # fmt: skip
    retired = await create({"resourceType": "Practitioner", "active": False, "name": [{"family": "Cheney"}]})
    clinic = await create(
        {"resourceType": "Organization", "active": True, "name": "Clínica Süd", "alias": ["Southside"],
         "telecom": [fax]}
    )  # fmt: skip
    other = await create({"resourceType": "Organization", "name": "Harbor"})
    role = await create(
        {"resourceType": "PractitionerRole", "active": True, "practitioner": {"reference": f"Practitioner/{chen}"},
         "organization": {"reference": f"Organization/{clinic}"}, "telecom": [fax]}
    )  # fmt: skip
    elsewhere = await create(
        {"resourceType": "PractitionerRole", "organization": {"reference": f"Organization/{other}"}}
    )
    service = await create({"resourceType": "HealthcareService", "active": True, "name": "Référrals Desk"})
    team = await create({"resourceType": "CareTeam", "name": "Cardiology team", "telecom": [fax]})
    person = await create(
        {"resourceType": "RelatedPerson", "active": True, "patient": {"reference": "Patient/p1"},
         "name": [{"text": "Zoë Ødegaard"}], "identifier": [{"value": "rp-1"}]}
    )  # fmt: skip
    cases = [
        ("Practitioner", [("name", "chen")], {chen, retired}),
        ("Practitioner", [("name", "AMELIE")], {chen}),
        ("Practitioner", [("name:exact", "Chén")], {chen}),
        ("Practitioner", [("active", "true")], {chen}),
        ("Practitioner", [("active:not", "true")], {retired}),
        ("Practitioner", [("active:missing", "true")], set()),
        ("Practitioner", [("telecom", "fax|+16175559999")], {chen}),
        ("Practitioner", [("identifier", "http://hl7.org/fhir/sid/us-npi|1234567890")], {chen}),
        ("Organization", [("name", "clinica")], {clinic}),
        ("Organization", [("name", "south")], {clinic}),  # the alias
        ("Organization", [("name:contains", "sud")], {clinic}),
        ("Organization", [("active:missing", "true")], {other}),
        ("Organization", [("telecom", "+16175559999")], {clinic}),
        ("PractitionerRole", [("practitioner", chen)], {role}),
        ("PractitionerRole", [("practitioner", f"Practitioner/{chen}")], {role}),
        ("PractitionerRole", [("organization", f"Organization/{other}")], {elsewhere}),
        ("PractitionerRole", [("organization", f"{clinic},{other}")], {role, elsewhere}),
        ("PractitionerRole", [("active", "true"), ("telecom", "fax|")], {role}),
        ("HealthcareService", [("name", "referrals d")], {service}),
        ("HealthcareService", [("active", "false")], set()),
        ("CareTeam", [("name", "cardio")], {team}),
        ("CareTeam", [("telecom", "fax|+16175559999")], {team}),
        ("RelatedPerson", [("name", "zoe odegaard")], {person}),
        ("RelatedPerson", [("identifier", "rp-1"), ("active", "true")], {person}),
    ]
    for resource_type, params, want in cases:
        assert set(await search_ids(api, params, resource_type)) == want, (resource_type, params)
    bundle = (
        await api.get("/fhir/PractitionerRole", params={"_id": role, "_include": "PractitionerRole:practitioner"})
    ).json()
    assert {e["resource"]["id"] for e in bundle["entry"]} == {role, chen}
    await check_declarations(api)


BAD_INPUT = [
    ("Patient", {"name:text": "x"}, "does not support the modifier ':text'", "name:text"),
    ("Patient", {"family:below": "x"}, "does not support the modifier ':below'", "family:below"),
    ("Patient", {"birthdate": "1970-13"}, "not a real date", "birthdate"),
    ("Patient", {"birthdate": "last week"}, "not a FHIR date", "birthdate"),
    ("Patient", {"name:missing": "maybe"}, "takes true or false", "name"),
    ("Patient", {"name": "   "}, "nothing to match", "name"),
    ("Patient", {"telecom": "a|b|c"}, "too many '|'", "telecom"),
    ("Practitioner", {"active": "yes"}, "active takes true or false", "active"),
    ("PractitionerRole", {"name": "chen"}, "Unknown search parameter 'name' for PractitionerRole", "name"),
    ("CareTeam", {"active": "true"}, "Unknown search parameter 'active' for CareTeam", "active"),
    ("PractitionerRole", {"practitioner:Organization": "x"}, "does not support the modifier", "practitioner"),
    ("Patient", {"_sort": "telecom"}, "_sort cannot use 'telecom'", "_sort"),
]


async def test_bad_input_is_400_naming_the_parameter(api: httpx.AsyncClient, database: Any) -> None:
    before = await database[SNAPSHOTS].count_documents({})  # the one thing a search may store
    for resource_type, params, message, named in BAD_INPUT:
        response = await api.get(f"/fhir/{resource_type}", params=params)
        assert response.status_code == 400, (params, response.text)
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert message in outcome["issue"][0]["diagnostics"], params
        assert any(named in expression for expression in outcome["issue"][0]["expression"]), params
    assert await database[SNAPSHOTS].count_documents({}) == before


async def test_access_rules_filter_and_the_index_reads_only_matches(
    api: httpx.AsyncClient, database: Any, patients: list[dict[str, Any]]
) -> None:
    hidden = next(r for r in patients if string_matches(human_name_parts(r), "mul"))
    policy = {
        "rule": [
            {"resource": "FHIR:Patient", "action": ["FHIR:Search", "FHIR:Read"], "effect": "Allow"},
            {"resource": f"FHIR:Patient:{hidden['id']}", "action": "FHIR:Read", "effect": "Deny"},
        ]
    }
    want = expected(patients, lambda r: string_matches(human_name_parts(r), "mul")) - {hidden["id"]}
    async with as_client(api, database, policy) as searcher:
        found = await searcher.get("/fhir/Patient", params={"name": "mul", "_count": "500", "_total": "accurate"})
        assert found.status_code == 200
        assert {e["resource"]["id"] for e in found.json()["entry"]} == want
        assert found.json()["total"] == len(want)
        refused = await searcher.get("/fhir/Practitioner", params={"name": "chen"})
        assert refused.status_code == 403
    # A name (or telecom) search reads only its matches, through its index.
    registry = default_registry()
    for params, index in (([("name", "MÜL")], "search_name"), ([("telecom", "+15550100")], "search_telecom")):
        query = parse_search("Patient", params, registry, default_count=20, max_count=500)
        plan = await database["Patient"].find(query.filter).limit(500).explain()
        assert "IXSCAN" in str(plan) and f"'indexName': '{index}'" in str(plan), params
        stats = plan["executionStats"]
        assert stats["totalDocsExamined"] == stats["nReturned"] == len(await search_ids(api, params)) > 0


async def test_resources_stored_before_the_parameters_get_their_keys(settings: Any, database: Any) -> None:
    unindexed = ResourceStore(database)  # a release that had no Patient parameters wrote no keys
    old = await unindexed.create({"resourceType": "Patient", "name": [{"family": "Ærøskøbing"}], "gender": "female"})
    gone = await unindexed.create({"resourceType": "Patient", "name": [{"family": "Aeroe"}]})
    await unindexed.delete("Patient", gone["id"])
    async with serving(settings, database) as api:
        assert await search_ids(api, [("family", "AEROSKO")]) == [old["id"]]
        assert await search_ids(api, [("family", "aero")]) == [old["id"]], "deleted resources stay deleted"
        assert await search_ids(api, [("_sort", "family"), ("gender", "female")]) == [old["id"]]
    # A release that computes keys differently: the record no longer matches, every resource is indexed again.
    await database[KEY_RECORDS].update_one({"_id": "Patient"}, {"$set": {"parameters": {}}})
    await database["Patient"].update_one({"_id": old["id"]}, {"$set": {f"{RESERVED}.keys": {}}})
    async with serving(settings, database) as api:
        assert await search_ids(api, [("family", "aer")]) == [old["id"]]
    record = await database[KEY_RECORDS].find_one({"_id": "Patient"})
    assert record["parameters"] == default_registry().signature("Patient")


async def check_declarations(api: httpx.AsyncClient) -> None:
    """Every parameter is in the CapabilityStatement, with its type and documentation."""
    statement = (await api.get("/fhir/metadata")).json()
    declared = {
        entry["type"]: {p["name"]: p for p in entry["searchParam"]} for entry in statement["rest"][0]["resource"]
    }
    wanted = {
        "Patient": {"name": "string", "family": "string", "given": "string", "birthdate": "date",
                    "identifier": "token", "telecom": "token", "gender": "token"},
        "Practitioner": {"name": "string", "identifier": "token", "telecom": "token", "active": "token"},
        "PractitionerRole": {"identifier": "token", "telecom": "token", "active": "token",
                             "practitioner": "reference", "organization": "reference"},
        "Organization": {"name": "string", "identifier": "token", "telecom": "token", "active": "token"},
        "HealthcareService": {"name": "string", "identifier": "token", "telecom": "token", "active": "token"},
        "CareTeam": {"name": "string", "identifier": "token", "telecom": "token"},
        "RelatedPerson": {"name": "string", "identifier": "token", "telecom": "token", "active": "token"},
    }  # fmt: skip
    for resource_type, parameters in wanted.items():
        for name, search_type in parameters.items():
            parameter = declared[resource_type][name]
            assert parameter["type"] == search_type, (resource_type, name)
            assert parameter["documentation"], (resource_type, name)
    assert "ignoring case and accents" in declared["Patient"]["name"]["documentation"]
    assert "Defined by this server" in declared["CareTeam"]["name"]["documentation"]
    assert (
        "PractitionerRole:practitioner"
        in next(e for e in statement["rest"][0]["resource"] if e["type"] == "Practitioner")["searchRevInclude"]
    )
