"""``$file``: a received fax filed to a patient (DocumentReference, subject, Task completed), once; and who may."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_external_issuers import Signer, external_settings, issuer_site, maria_token  # noqa: F401 (a fixture)

from fhir_fax.auth.clients import Clients
from fhir_fax.fax.inbound import COLLECTION as INBOUND
from fhir_fax.fax.inbound_repair import repair_received
from fhir_fax.fhir.compartments import PATIENT_COMPARTMENT, compartment_filter
from fhir_fax.fhir.models import model_class
from fhir_fax.fhir.search_params import default_registry
from fhir_fax.fhir.store import ResourceStore
from fhir_fax.settings import Settings
from fhir_fax.z3.store import GRIDFS_BUCKET, Z3Store

from helpers import FHIR_JSON, login, seed_request, serving_fax
from inbound_helpers import REFERRAL, download, inbound_counts, simulate
from smart_helpers import Flow, make_app, make_user, token_for

MARIA = "Patient/maria-lopez"


def filing(patient: str, **more: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [{"name": "patient", "valueReference": {"reference": patient}}]
    for name, value in more.items():
        parameters.append({"name": name, "valueString" if name == "note" else "valueCode": value})
    return {"resourceType": "Parameters", "parameter": parameters}


async def received(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await simulate(http, REFERRAL)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def file(http: httpx.AsyncClient, communication_id: str, body: dict[str, Any]) -> httpx.Response:
    return await http.post(f"/fhir/Communication/{communication_id}/$file", json=body, headers=FHIR_JSON)


async def state(database: Any, fax: dict[str, Any]) -> dict[str, Any]:
    """Everything ``$file`` may change, to compare before and after."""
    communication = await database["Communication"].find_one({"_id": fax["communication"]["id"]})
    task = await database["Task"].find_one({"_id": fax["task"]["id"]})
    return {
        **await inbound_counts(database),
        "communication version": communication["meta"]["versionId"],
        "task": (task["status"], task["meta"]["versionId"]),
        "audit": await database["AuditEvent"].count_documents({"subtype.code": "file-fax"}),
    }


async def test_filing_creates_the_document_reference_and_completes_the_task(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    fax = await received(fax_api)
    communication_id = fax["communication"]["id"]
    response = await file(fax_api, communication_id, filing(MARIA, type="57133-1", note="Referral from cardiology"))
    assert response.status_code == 201, response.text
    document = response.json()
    model_class("DocumentReference").model_validate(document)
    assert document["subject"] == {"reference": MARIA}
    assert document["type"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "57133-1",
        "display": "Referral note",
    }
    assert document["context"]["related"] == [{"reference": f"Communication/{communication_id}"}]
    attachment = document["content"][0]["attachment"]
    assert attachment == fax["communication"]["payload"][0]["contentAttachment"]
    assert await download(fax_api, attachment["url"]) == REFERRAL
    communication = (await fax_api.get(f"/fhir/Communication/{communication_id}")).json()
    assert communication["subject"] == {"reference": MARIA}
    task = (await fax_api.get(f"/fhir/Task/{fax['task']['id']}")).json()
    assert task["status"] == "completed" and task["for"] == {"reference": MARIA}
    assert task["output"][0]["valueReference"] == {"reference": f"DocumentReference/{document['id']}"}
    [event] = await database["AuditEvent"].find({"subtype.code": "file-fax"}).to_list(None)
    assert {f"Communication/{communication_id}", MARIA, f"DocumentReference/{document['id']}"} <= {
        e["what"].get("reference") for e in event["entity"]
    }
    # the patient's documents and faxes are FHIR searches
    found = (await fax_api.get("/fhir/DocumentReference", params={"patient": "maria-lopez"})).json()
    assert document["id"] in {e["resource"]["id"] for e in found["entry"]}
    reads = (
        await database["AuditEvent"]
        .find({"entity.what.reference": f"DocumentReference/{document['id']}"})
        .to_list(None)
    )
    assert {"search-type", "file-fax"} <= {e["subtype"][0]["code"] for e in reads}, "filed faxes read are audited"
    # the operation is advertised, and its definition served
    statement = (await fax_api.get("/fhir/metadata")).json()
    operations = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Communication")["operation"]
    assert {"name": "file", "definition": "urn:fhir-fax:OperationDefinition:file"} in operations
    definition = (await fax_api.get("/fhir/OperationDefinition/file")).json()
    assert (definition["instance"], definition["type"]) == (True, False)
    # filing again changes nothing and answers the same DocumentReference
    before = await state(database, fax)
    again = await file(fax_api, communication_id, filing(MARIA, type="11502-2"))
    assert again.status_code == 200 and again.json() == document
    assert await state(database, fax) == before
    # and filing it to another patient is a conflict that changes nothing either
    response = await file(fax_api, communication_id, filing("Patient/james-oneil"))
    assert response.status_code == 409
    assert response.json()["issue"][0]["diagnostics"].startswith("patient: this fax is already filed to Patient/maria")
    assert await state(database, fax) == before


async def test_filing_to_a_missing_patient_or_with_bad_parameters_is_refused(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    fax = await received(fax_api)
    assert (await fax_api.delete("/fhir/Patient/james-oneil")).status_code in (200, 204)
    before = await state(database, fax)
    for patient, message in (
        ("Patient/nobody", "patient: Patient/nobody does not exist; file the fax to an existing patient."),
        ("Patient/james-oneil", "patient: Patient/james-oneil was deleted; file the fax to an existing patient."),
    ):
        response = await file(fax_api, fax["communication"]["id"], filing(patient))
        assert response.status_code == 422, response.text
        issue = response.json()["issue"][0]
        assert issue["diagnostics"] == message and issue["expression"] == ["patient"]
    assert await state(database, fax) == before
    for body, message in (
        (filing(MARIA, type="referral"), "type: 'referral' is not a LOINC code"),
        (filing("Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c"), "patient: 'Practitioner/"),
        ({"resourceType": "Parameters"}, "Parameter 'patient' is required"),
    ):
        response = await file(fax_api, fax["communication"]["id"], body)
        assert response.status_code == 400, response.text
        assert message in response.json()["issue"][0]["diagnostics"]
    missing = await file(fax_api, "no-such-fax", filing(MARIA))
    assert missing.status_code == 404
    assert await state(database, fax) == before
    sent = await fax_api.post("/fax/v1/send", json=seed_request())
    outbound = sent.json()["communicationResource"]["id"]
    refused = await file(fax_api, outbound, filing(MARIA))
    assert refused.status_code == 422
    assert refused.json()["issue"][0]["diagnostics"] == (
        f"Communication/{outbound} is not a received fax; only received faxes are filed."
    )
    assert await database["DocumentReference"].count_documents({}) == 0


async def test_filing_needs_update_on_the_communication_and_read_on_the_patient(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    fax = await received(fax_api)
    before = await state(database, fax)
    read_only = {"rule": [{"resource": "FHIR:*", "action": ["FHIR:Read", "FHIR:Search"], "effect": "Allow"}]}
    no_patient = {
        "rule": [
            {"resource": "FHIR:*", "action": "FHIR:*", "effect": "Allow"},
            {"resource": "FHIR:Patient:maria-lopez", "action": "FHIR:Read", "effect": "Deny"},
        ]
    }
    for name, policy, message in (
        ("reader", read_only, "does not allow FHIR:Update on FHIR:Communication"),
        ("no maria", no_patient, "does not allow FHIR:Read on FHIR:Patient:maria-lopez"),
    ):
        record, secret = await Clients(database).create(name, policy)
        async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as http:
            await login(http, record["clientId"], secret)
            response = await file(http, fax["communication"]["id"], filing(MARIA))
        assert response.status_code == 403, response.text
        assert message in response.json()["issue"][0]["diagnostics"]
    assert await state(database, fax) == before


@pytest.mark.e2e  # the issuer's JWKS site is a server process
async def test_a_patient_token_sees_only_faxes_filed_to_its_patient(
    tmp_path: Path,
    database: Any,
    issuer_site: tuple[Signer, str],  # noqa: F811 (the fixture imported above)
) -> None:
    async with serving_fax(external_settings(tmp_path, issuer_site[1]), database) as api:
        maria_fax, james_fax, unfiled = await received(api), await received(api), await received(api)
        assert (await file(api, maria_fax["communication"]["id"], filing(MARIA))).status_code == 201
        assert (await file(api, james_fax["communication"]["id"], filing("Patient/james-oneil"))).status_code == 201
        headers = maria_token(issuer_site[0], scope="patient/*.rs")
        found = (await api.get("/fhir/Communication", params={"medium": "FAXWRIT"}, headers=headers)).json()
        assert {e["resource"]["id"] for e in found["entry"]} == {maria_fax["communication"]["id"]}
        for other in (james_fax, unfiled):
            refused = await api.get(f"/fhir/Communication/{other['communication']['id']}", headers=headers)
            assert refused.status_code == 403
            url = other["communication"]["payload"][0]["contentAttachment"]["url"].split("/v1/z3/")[1]
            document = await api.post(f"/v1/z3/{url}", json={"action": "download"}, headers=headers)
            assert document.status_code == 403 and "limited to Patient/maria-lopez" in document.json()["message"]
        own = maria_fax["communication"]["payload"][0]["contentAttachment"]["url"].split("/v1/z3/")[1]
        assert (await api.post(f"/v1/z3/{own}", json={"action": "download"}, headers=headers)).status_code == 200
        tasks = (await api.get("/fhir/Task", headers=headers)).json()
        assert {e["resource"]["id"] for e in tasks["entry"]} == {maria_fax["task"]["id"]}
        documents = (await api.get("/fhir/DocumentReference", headers=headers)).json()
        assert [e["resource"]["subject"]["reference"] for e in documents["entry"]] == [MARIA]


async def test_the_patient_compartment_is_searched_through_indexes(fax_api: httpx.AsyncClient, database: Any) -> None:
    registry = default_registry()
    unindexed = [
        f"{resource_type}.{member}"
        for resource_type, members in PATIENT_COMPARTMENT.items()
        if resource_type in registry.by_type
        for member in members
        if not registry.by_type[resource_type][member].indexed
    ]
    assert unindexed == [], "a compartment member without an index makes every patient-limited search a scan"
    fax = await received(fax_api)
    assert (await file(fax_api, fax["communication"]["id"], filing(MARIA))).status_code == 201
    # each branch of the compartment's $or reads through its own index (MongoDB unions them; the embedded
    # server's planner scans an $or today, so the branches are checked one by one)
    for branch in compartment_filter("DocumentReference", "maria-lopez")["$or"]:
        [(key, _)] = branch.items()
        plan = str(await database["DocumentReference"].find(branch).explain())
        assert "IXSCAN" in plan and f"'indexName': 'search_{key.split('.')[2]}'" in plan, plan


async def test_a_filed_task_names_no_other_suggested_patient(fax_api: httpx.AsyncClient, database: Any) -> None:
    # another patient the letter also points at: Maria's family name and birth date
    other = f"lee-{uuid.uuid4().hex[:8]}"
    namesake = {
        "resourceType": "Patient",
        "id": other,
        "identifier": [{"system": "urn:mrn", "value": f"MRN-{other}"}],
        "name": [{"family": "Lopez", "given": ["Bartholomew"]}],
        "birthDate": "1958-04-17",
    }
    assert (await fax_api.put(f"/fhir/Patient/{other}", json=namesake, headers=FHIR_JSON)).status_code == 201
    fax = (await simulate(fax_api, REFERRAL, caller="+16175550141")).json()  # Harbor Cardiology's line
    suggested = {i["valueReference"]["reference"] for i in fax["task"]["input"]}
    assert {MARIA, f"Patient/{other}"} <= suggested, "both patients were suggested to staff"
    assert (await file(fax_api, fax["communication"]["id"], filing(MARIA))).status_code == 201
    task = (await fax_api.get(f"/fhir/Task/{fax['task']['id']}")).json()
    patients = [i for i in task["input"] if i["type"]["coding"][0]["code"] == "suggested-patient"]
    assert [i["valueReference"]["reference"] for i in patients] == [MARIA], "only the filed patient's suggestion"
    assert any(i["type"]["coding"][0]["code"] == "suggested-sender" for i in task["input"]), "the sender's stays"
    # Maria's patient-limited token reads the filed Task, and nothing of the other patient
    username = await make_user(database, fhir_user="Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c")
    app = await make_app(database)
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        flow = Flow(app, "openid fhirUser launch/patient patient/*.rs")
        token = await token_for(web, flow, username, patient="maria-lopez")
        web.headers["authorization"] = f"Bearer {token['access_token']}"
        found = await web.get("/fhir/Task", params={"patient": MARIA})
        read = await web.get(f"/fhir/Task/{fax['task']['id']}")
    assert found.status_code == read.status_code == 200, (found.text, read.text)
    assert fax["task"]["id"] in {e["resource"]["id"] for e in found.json()["entry"]}
    for text in (found.text, read.text):
        assert other not in text and "Bartholomew" not in text


async def test_filing_needs_the_rights_to_write_the_document_reference_and_the_task(
    fax_settings: Settings, database: Any
) -> None:
    async with serving_fax(fax_settings, database) as api:
        fax = await received(api)
        before = await state(database, fax)
        for name, denied, message in (
            ("no documents", ("FHIR:Create", "FHIR:DocumentReference"),
             "does not allow FHIR:Create on FHIR:DocumentReference"),
            ("no tasks", ("FHIR:Update", "FHIR:Task:*"),
             f"does not allow FHIR:Update on FHIR:Task:{fax['task']['id']}"),
        ):  # fmt: skip
            policy = {
                "rule": [
                    {"resource": "FHIR:*", "action": "FHIR:*", "effect": "Allow"},
                    {"resource": denied[1], "action": denied[0], "effect": "Deny"},
                ]
            }
            record, secret = await Clients(database).create(name, policy)
            async with httpx.AsyncClient(transport=api._transport, base_url="http://fhir.test") as http:
                await login(http, record["clientId"], secret)
                response = await file(http, fax["communication"]["id"], filing(MARIA))
            assert response.status_code == 403, response.text
            assert message in response.json()["issue"][0]["diagnostics"]
            assert await state(database, fax) == before, "nothing stored"
            assert await database["DocumentReference"].count_documents({}) == 0
        # a SMART token without DocumentReference or Task scopes is refused the same way
        username = await make_user(database)
        app = await make_app(database)
        async with httpx.AsyncClient(transport=api._transport, base_url="http://fhir.test") as web:
            flow = Flow(app, "openid fhirUser user/Communication.u user/Patient.r")
            web.headers["authorization"] = f"Bearer {(await token_for(web, flow, username))['access_token']}"
            scoped = await file(web, fax["communication"]["id"], filing(MARIA))
        assert scoped.status_code == 403, scoped.text
        assert "DocumentReference" in scoped.json()["issue"][0]["diagnostics"]
        assert await state(database, fax) == before
        # filed: asking again answers the DocumentReference, and that read is audited like any other
        document = (await file(api, fax["communication"]["id"], filing(MARIA))).json()
        assert (await file(api, fax["communication"]["id"], filing(MARIA))).status_code == 200
        reads = await database["AuditEvent"].count_documents(
            {"entity.what.reference": f"DocumentReference/{document['id']}", "subtype.code": "read"}
        )
        assert reads == 1
    refused = await database["AuditEvent"].find({"subtype.code": "access-refused"}).to_list(None)
    described = " ".join(e["outcomeDesc"] for e in refused)
    assert "FHIR:Create on FHIR:DocumentReference" in described and "FHIR:Update on FHIR:Task" in described


async def test_faxes_received_before_the_fixes_are_repaired_once(fax_api: httpx.AsyncClient, database: Any) -> None:
    other = f"lee-{uuid.uuid4().hex[:8]}"
    namesake = {"resourceType": "Patient", "id": other, "name": [{"family": "Lopez"}], "birthDate": "1958-04-17"}
    assert (await fax_api.put(f"/fhir/Patient/{other}", json=namesake, headers=FHIR_JSON)).status_code == 201
    fax = await received(fax_api)
    assert (await file(fax_api, fax["communication"]["id"], filing(MARIA))).status_code == 201
    record = await database[INBOUND].find_one({"communication_id": fax["communication"]["id"]})
    # as a release before the fixes left it: documents unpinned, the other suggestion on the filed Task
    await database[INBOUND].update_one({"_id": record["_id"]}, {"$unset": {"repaired": ""}})
    await database[f"{GRIDFS_BUCKET}.files"].update_many(
        {"metadata.receivedFax": record["fax_id"]}, {"$unset": {"metadata.pinned": "", "metadata.sha1": ""}}
    )
    await database["Task"].update_one({"_id": fax["task"]["id"]}, {"$set": {"input": fax["task"]["input"]}})
    assert other in (await fax_api.get(f"/fhir/Task/{fax['task']['id']}")).text
    store, z3 = ResourceStore(database, default_registry().indexer), Z3Store(database)
    assert await repair_received(database[INBOUND], store, z3) == 1
    assert await repair_received(database[INBOUND], store, z3) == 0, "once"
    task = (await fax_api.get(f"/fhir/Task/{fax['task']['id']}")).json()
    assert other not in str(task) and MARIA in str(task["input"]) and task["status"] == "completed"
    attachment = fax["communication"]["payload"][0]["contentAttachment"]
    path = attachment["url"].split("/v1/z3/", 1)[1]
    assert (await fax_api.delete(f"/v1/z3/{path}")).status_code == 204
    by_hash = await fax_api.post(f"/v1/z3/{path}", json={"action": "download", "hash": attachment["hash"]})
    assert by_hash.status_code == 200, by_hash.text
    assert (await fax_api.get(by_hash.json()["signedUrl"])).content == REFERRAL


async def test_a_fax_whose_task_was_already_handled_is_not_filed(fax_api: httpx.AsyncClient, database: Any) -> None:
    fax = await received(fax_api)
    task_id = fax["task"]["id"]
    task = (await fax_api.get(f"/fhir/Task/{task_id}")).json()
    # another user marks it "not patient-related" (as the app does: a conditional PUT of the Task it read)
    dismissed = {**task, "status": "completed", "businessStatus": {"text": "Not patient-related"}}
    version = task["meta"]["versionId"]
    put = await fax_api.put(
        f"/fhir/Task/{task_id}", json=dismissed, headers={**FHIR_JSON, "If-Match": f'W/"{version}"'}
    )
    assert put.status_code == 200, put.text
    before = await state(database, fax)
    response = await file(fax_api, fax["communication"]["id"], filing(MARIA))
    assert response.status_code == 409, response.text
    assert response.json()["issue"][0]["diagnostics"] == (
        f"Communication/{fax['communication']['id']}: this fax was already handled (its Task/{task_id} is "
        "completed: Not patient-related); it is not filed. Reopen the Task (status requested) to file it."
    )
    assert await state(database, fax) == before, "nothing stored or changed"
    assert (
        await database["DocumentReference"].count_documents(
            {"context.related.reference": f"Communication/{fax['communication']['id']}"}
        )
        == 0
    )
    stored = (await fax_api.get(f"/fhir/Task/{task_id}")).json()
    assert "for" not in stored and "output" not in stored
    communication = (await fax_api.get(f"/fhir/Communication/{fax['communication']['id']}")).json()
    assert "subject" not in communication
    # and the other way round: "not patient-related" after a filing is refused by its If-Match
    other = await received(fax_api)
    read = (await fax_api.get(f"/fhir/Task/{other['task']['id']}")).json()
    assert (await file(fax_api, other["communication"]["id"], filing(MARIA))).status_code == 201
    late = {**read, "status": "completed", "businessStatus": {"text": "Not patient-related"}}
    stale = await fax_api.put(
        f"/fhir/Task/{read['id']}", json=late, headers={**FHIR_JSON, "If-Match": f'W/"{read["meta"]["versionId"]}"'}
    )
    assert stale.status_code == 412, stale.text
    kept = (await fax_api.get(f"/fhir/Task/{read['id']}")).json()
    assert kept["for"] == {"reference": MARIA} and "businessStatus" not in kept


async def test_a_patient_limited_token_previews_only_received_faxes_filed_to_its_patient(
    fax_api: httpx.AsyncClient, database: Any
) -> None:
    unfiled, james, maria = await received(fax_api), await received(fax_api), await received(fax_api)
    assert (await file(fax_api, james["communication"]["id"], filing("Patient/james-oneil"))).status_code == 201
    assert (await file(fax_api, maria["communication"]["id"], filing(MARIA))).status_code == 201
    username = await make_user(database, fhir_user="Practitioner/51940f7e-7311-4006-b9aa-83bbc0c5b62c")
    app = await make_app(database)
    previews = {"subtype.code": "preview"}
    async with httpx.AsyncClient(transport=fax_api._transport, base_url="http://fhir.test") as web:
        flow = Flow(app, "openid fhirUser launch/patient patient/*.rs")
        token = await token_for(web, flow, username, patient="maria-lopez")
        web.headers["authorization"] = f"Bearer {token['access_token']}"
        for other in (unfiled, james):
            communication_id = other["communication"]["id"]
            before = await database["AuditEvent"].count_documents(previews)
            refused = await web.get(f"/fax/v1/faxes/{communication_id}/preview", params={"page": "1"})
            assert refused.status_code == 403, refused.text
            assert refused.headers["content-type"].startswith("application/json"), "no page image"
            body = refused.json()
            assert "limited to Patient/maria-lopez" in body["message"] and body["code"], body
            assert await database["AuditEvent"].count_documents(previews) == before, "no preview was made"
        own = await web.get(f"/fax/v1/faxes/{maria['communication']['id']}/preview", params={"page": "1"})
    assert own.status_code == 200, own.text
    assert own.headers["content-type"] == "image/png" and own.content.startswith(b"\x89PNG")
    events = await database["AuditEvent"].find(previews).to_list(None)
    read = {e["what"].get("reference") for event in events for e in event["entity"]}
    assert f"Communication/{maria['communication']['id']}" in read
    assert f"Communication/{unfiled['communication']['id']}" not in read
    assert f"Communication/{james['communication']['id']}" not in read
