"""A token an app got for a patient reads and writes only that patient's compartment, through the same gate as
every other token: Communications, previews, documents, and the faxes it may send. EHR launches carry the
patient the EHR chose, with no picker."""

from __future__ import annotations

from typing import Any

import httpx

from fhir_fax.z3.locations import Z3Location
from fhir_fax.z3.store import Z3Store

from helpers import FIXTURES, seed_request, stored_counts
from smart_helpers import Flow, authorize, exchange, make_app, make_user, token_for

MARIA, JAMES = "maria-lopez", "james-oneil"


async def _faxes(admin: httpx.AsyncClient, database: Any) -> dict[str, str]:
    """A fax about Maria (the seed's document) and one about James with a document only it carries."""
    maria = await admin.post("/fax/v1/send", json=seed_request(patient=f"Patient/{MARIA}"))
    pdf = (FIXTURES / "referral-letter.pdf").read_bytes()
    await Z3Store(database).put(Z3Location("my-bucket", "james/letter.pdf"), pdf, "application/pdf")
    james = await admin.post(
        "/fax/v1/send", json=seed_request(media="z3://my-bucket/james/letter.pdf", patient=f"Patient/{JAMES}")
    )
    assert maria.status_code == james.status_code == 200, (maria.text, james.text)
    return {"maria": maria.json()["communicationResource"]["id"], "james": james.json()["communicationResource"]["id"]}


async def test_a_patient_launched_token_keeps_to_its_patients_compartment(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    faxes = await _faxes(fax_api, database)
    username = await make_user(database, fhir_user="Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c")
    app = await make_app(database)
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        flow = Flow(app, "openid fhirUser launch/patient patient/*.cruds")
        body = await token_for(web, flow, username, patient=MARIA)
        assert body["patient"] == MARIA and body["scope"] == flow.scope
        web.headers["authorization"] = f"Bearer {body['access_token']}"

        found = await web.get("/fhir/Communication")
        assert found.status_code == 200
        assert {e["resource"]["id"] for e in found.json()["entry"]} == {faxes["maria"]}
        refused = await web.get(f"/fhir/Communication/{faxes['james']}")
        assert refused.status_code == 403
        assert "limited to Patient/maria-lopez" in refused.json()["issue"][0]["diagnostics"]
        assert (await web.get(f"/fhir/Patient/{JAMES}")).status_code == 403

        preview = await web.get(f"/fax/v1/faxes/{faxes['james']}/preview", params={"page": "1"})
        assert preview.status_code == 403 and "limited to Patient/maria-lopez" in preview.json()["message"]
        own = await web.get(f"/fax/v1/faxes/{faxes['maria']}/preview", params={"page": "1"})
        assert own.status_code == 200 and own.headers["content-type"] == "image/png"

        document = await web.post("/v1/z3/my-bucket/james/letter.pdf", json={"action": "download"})
        assert document.status_code == 403
        assert "carried by no fax in Patient/maria-lopez's compartment" in document.json()["message"]
        seed = await web.post("/v1/z3/my-bucket/path/to/document.pdf", json={"action": "download"})
        assert seed.status_code == 200 and seed.json()["signedUrl"]

        before = await stored_counts(database)
        for patient, message in (
            (f"Patient/{JAMES}", "limited to Patient/maria-lopez"),
            (None, "a fax it sends must name that patient"),
        ):
            sent = await web.post("/fax/v1/send", json=seed_request(patient=patient))
            assert sent.status_code == 403 and message in sent.json()["message"], sent.text
        assert await stored_counts(database) == before
        sent = await web.post("/fax/v1/send", json=seed_request(patient=f"Patient/{MARIA}"))
        assert sent.status_code == 200, sent.text

    [preview_event] = await database["AuditEvent"].find({"subtype.code": "preview"}).to_list(None)
    assert preview_event["agent"][0]["who"]["identifier"]["value"] == f"{username} via {app.client_id}"
    refusals = await database["AuditEvent"].find({"subtype.code": "access-refused"}).to_list(None)
    assert any(f"Communication/{faxes['james']} is outside it" in e["outcomeDesc"] for e in refusals)


async def test_an_ehr_launch_brings_its_patient(fax_api: httpx.AsyncClient, database: Any) -> None:
    for body, status, message in (
        ({"patient": "Patient/nobody"}, 404, "Patient/nobody does not exist"),
        ({"patient": "Practitioner/x"}, 400, "patient must be a reference such as Patient/123"),
        ({"encounter": "Encounter/1"}, 400, "patient is required"),
        ({"patient": f"Patient/{MARIA}", "user": "x"}, 400, "The body is"),
    ):
        refused = await fax_api.post("/oauth/launch", json=body)
        assert refused.status_code == status and message in refused.json()["message"], refused.text
    assert await database["smart_launches"].count_documents({}) == 0
    launched = await fax_api.post("/oauth/launch", json={"patient": f"Patient/{MARIA}"})
    assert launched.status_code == 200, launched.text
    launch = launched.json()["launch"]

    username = await make_user(database)
    app = await make_app(database)
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        flow = Flow(app, "openid launch patient/Communication.rs", extra={"launch": launch})
        answer = await authorize(web, flow, username)  # no picker: the EHR chose the patient
        token = (await exchange(web, flow, answer["code"])).json()
        assert token["patient"] == MARIA and token["need_patient_banner"] is False
        web.headers["authorization"] = f"Bearer {token['access_token']}"
        assert (await web.get("/fhir/Communication")).status_code == 200
        assert (await web.get(f"/fhir/Patient/{JAMES}")).status_code == 403, "patient/Communication only"


async def test_a_patient_token_sees_only_its_patients_related_persons_and_care_teams(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    """RelatedPerson (by ``patient``) and CareTeam (by ``patient`` and ``participant``) are in the compartment."""
    made: dict[str, str] = {}
    for name, resource in {
        "maria-mother": {"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{MARIA}"}},
        "james-mother": {"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{JAMES}"}},
        "maria-team": {"resourceType": "CareTeam", "subject": {"reference": f"Patient/{MARIA}"}},
        "james-team": {"resourceType": "CareTeam", "subject": {"reference": f"Patient/{JAMES}"}},
        "maria-member": {"resourceType": "CareTeam", "participant": [{"member": {"reference": f"Patient/{MARIA}"}}]},
    }.items():
        response = await fax_api.post(f"/fhir/{resource['resourceType']}", json=resource)
        assert response.status_code == 201, response.text
        made[name] = response.json()["id"]
    found = await fax_api.get("/fhir/RelatedPerson", params={"patient": f"Patient/{MARIA}"})
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [made["maria-mother"]]
    username = await make_user(database)
    app = await make_app(database)
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        body = await token_for(web, Flow(app, "launch/patient patient/*.rs"), username, patient=MARIA)
        web.headers["authorization"] = f"Bearer {body['access_token']}"
        related = await web.get("/fhir/RelatedPerson")
        assert related.status_code == 200, related.text
        assert {e["resource"]["id"] for e in related.json().get("entry", [])} == {made["maria-mother"]}
        teams = await web.get("/fhir/CareTeam")
        assert {e["resource"]["id"] for e in teams.json().get("entry", [])} == {
            made["maria-team"],
            made["maria-member"],
        }
        for path in (f"/fhir/RelatedPerson/{made['james-mother']}", f"/fhir/CareTeam/{made['james-team']}"):
            refused = await web.get(path)
            assert refused.status_code == 403, path
            assert "limited to Patient/maria-lopez" in refused.json()["issue"][0]["diagnostics"]
        assert (await web.get(f"/fhir/RelatedPerson/{made['maria-mother']}")).status_code == 200
